"""What runs on the node: the TPM driver and the attestation agent."""
