"""Names of TCG event types and of systemd's tagged events (tables for formats/eventlog.py)."""

from __future__ import annotations

from ultraviolet.errors import FormatError


class EventLogError(FormatError):
    """A firmware or userspace event log that does not parse or replay (every eventlog module)."""


# PC Client PFP, section 10.4.1 "Event Types".
EVENT_TYPES: dict[int, str] = {
    0x00: "EV_PREBOOT_CERT",
    0x01: "EV_POST_CODE",
    0x02: "EV_UNUSED",
    0x03: "EV_NO_ACTION",
    0x04: "EV_SEPARATOR",
    0x05: "EV_ACTION",
    0x06: "EV_EVENT_TAG",
    0x07: "EV_S_CRTM_CONTENTS",
    0x08: "EV_S_CRTM_VERSION",
    0x09: "EV_CPU_MICROCODE",
    0x0A: "EV_PLATFORM_CONFIG_FLAGS",
    0x0B: "EV_TABLE_OF_DEVICES",
    0x0C: "EV_COMPACT_HASH",
    0x0D: "EV_IPL",
    0x0E: "EV_IPL_PARTITION_DATA",
    0x0F: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
    0x800000E3: "EV_EFI_SPDM_DEVICE_POLICY",
    0x800000E4: "EV_EFI_SPDM_DEVICE_AUTHORITY",
}

# systemd-boot's and systemd-stub's EV_EVENT_TAG ids (systemd docs/TPM2_PCR_MEASUREMENTS.md).
SYSTEMD_EVENT_TAGS: dict[int, str] = {
    0xD5CB7CBC: "smbios:type1",
    0xE0D47BC8: "smbios:type2",
    0xC0B3BD23: "smbios:type11",
    0xF5BC582A: "loader.conf",
    0x6C46F751: "devicetree-addon",
    0x49DFFE0F: "initrd-addon",
    0xDAC08E1A: "ucode-addon",
}
