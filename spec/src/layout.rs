//! The partition layout of every image, as data: the build writes it, `inspect` and the tests
//! read it, the Raspberry Pi's cmdline.txt and the update program find their partitions by it.
//!
//! In disk order: BIOS boot (x86_64 with BIOS boot only), the ESP, root and verity of slot A,
//! root and verity of slot B, data. Every partition starts on a 1 MiB boundary. The two root
//! slots are the same size, so an update can write the next version into the slot that is not
//! running (see docs/architecture.md, "Disk layout").

use uuid::Uuid;

use crate::arch::Arch;
use crate::verity;

/// Logical sector size of the images.
pub const SECTOR: u64 = 512;
/// Partition alignment and size granularity.
pub const ALIGN: u64 = 1024 * 1024;
/// Size of the BIOS boot partition (GRUB's core.img).
pub const BIOS_BOOT_SIZE: u64 = ALIGN;

/// GPT attribute bit 60: read-only (Discoverable Partitions Specification).
pub const FLAG_READ_ONLY: u64 = 1 << 60;
/// GPT attribute bit 63: do not auto-mount (Discoverable Partitions Specification).
pub const FLAG_NO_AUTO: u64 = 1 << 63;

/// Partition labels that do not depend on the configuration.
pub const LABEL_BIOS_BOOT: &str = "bios-boot";
pub const LABEL_ESP: &str = "esp";

/// Partition type GUIDs (UEFI specification and the Discoverable Partitions Specification).
pub mod types {
    use uuid::Uuid;

    /// BIOS boot partition: holds GRUB's core.img for legacy boot.
    pub const BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
    /// EFI system partition.
    pub const ESP: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
    /// Root file system, x86-64.
    pub const ROOT_X86_64: Uuid = Uuid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709);
    /// dm-verity hash data for the x86-64 root.
    pub const ROOT_VERITY_X86_64: Uuid = Uuid::from_u128(0x2c7357ed_ebd2_46d9_aec1_23d437ec2bf5);
    /// Root file system, arm64.
    pub const ROOT_ARM64: Uuid = Uuid::from_u128(0xb921b045_1df0_41c3_af44_4c6f280d3fae);
    /// dm-verity hash data for the arm64 root.
    pub const ROOT_VERITY_ARM64: Uuid = Uuid::from_u128(0xdf3300ce_d69f_4c92_978c_9bfb0f38d820);
    /// Generic Linux data.
    pub const LINUX_GENERIC: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
}

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn parse(text: &str) -> Option<Slot> {
        match text {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn root_label(self) -> String {
        format!("root-{}", self.letter())
    }

    pub fn verity_label(self) -> String {
        format!("verity-{}", self.letter())
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    BiosBoot,
    Esp,
    Root(Slot),
    Verity(Slot),
    Data,
}

/// One partition of the layout, before it is placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDef {
    pub role: Role,
    /// GPT partition name (PARTLABEL).
    pub label: String,
    pub type_guid: Uuid,
    /// Bytes, a multiple of [`ALIGN`].
    pub size: u64,
    /// GPT attribute bits.
    pub flags: u64,
}

/// The settings the layout depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutParams {
    pub arch: Arch,
    /// Whether the disk carries GRUB for legacy BIOS boot (x86_64 only).
    pub bios: bool,
    pub esp_size: u64,
    /// Size of each root slot.
    pub slot_size: u64,
    /// Size of the data partition in the image (it grows to the end of the disk on first boot).
    pub data_size: u64,
    pub data_label: String,
}

/// Size of a slot's verity partition: the hash tree of a full slot, rounded up to [`ALIGN`].
pub fn verity_partition_size(slot_size: u64) -> u64 {
    round_up(verity::hash_device_size(slot_size), ALIGN)
}

pub fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// The partitions of an image, in disk order.
pub fn partitions(p: &LayoutParams) -> Vec<PartitionDef> {
    let mut out = Vec::new();
    if p.bios {
        out.push(PartitionDef {
            role: Role::BiosBoot,
            label: LABEL_BIOS_BOOT.into(),
            type_guid: types::BIOS_BOOT,
            size: BIOS_BOOT_SIZE,
            flags: 0,
        });
    }
    out.push(PartitionDef {
        role: Role::Esp,
        label: LABEL_ESP.into(),
        type_guid: types::ESP,
        size: round_up(p.esp_size, ALIGN),
        flags: 0,
    });
    let slot_size = round_up(p.slot_size, ALIGN);
    for slot in Slot::ALL {
        // Slot A is the one the image boots; slot B is empty until an update writes it, and
        // nothing may mount it on its own.
        let flags = match slot {
            Slot::A => FLAG_READ_ONLY,
            Slot::B => FLAG_NO_AUTO,
        };
        out.push(PartitionDef {
            role: Role::Root(slot),
            label: slot.root_label(),
            type_guid: p.arch.root_type(),
            size: slot_size,
            flags,
        });
        out.push(PartitionDef {
            role: Role::Verity(slot),
            label: slot.verity_label(),
            type_guid: p.arch.verity_type(),
            size: verity_partition_size(slot_size),
            flags,
        });
    }
    out.push(PartitionDef {
        role: Role::Data,
        label: p.data_label.clone(),
        type_guid: types::LINUX_GENERIC,
        size: round_up(p.data_size, ALIGN),
        flags: 0,
    });
    out
}

/// A partition as read back from an image's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    /// 1-based entry slot.
    pub number: u32,
    pub label: String,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub flags: u64,
}

impl TableEntry {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// What a table read back from an image holds, found by role.
pub struct Table<'a> {
    pub entries: &'a [TableEntry],
}

impl<'a> Table<'a> {
    pub fn new(entries: &'a [TableEntry]) -> Table<'a> {
        Table { entries }
    }

    pub fn esp(&self) -> Option<&'a TableEntry> {
        self.entries.iter().find(|e| e.type_guid == types::ESP)
    }

    pub fn by_label(&self, label: &str) -> Option<&'a TableEntry> {
        self.entries.iter().find(|e| e.label == label)
    }

    pub fn root(&self, slot: Slot) -> Option<&'a TableEntry> {
        self.by_label(&slot.root_label())
    }

    pub fn verity(&self, slot: Slot) -> Option<&'a TableEntry> {
        self.by_label(&slot.verity_label())
    }

    /// The image's architecture, from the type of its slot A root partition.
    pub fn arch(&self) -> Option<Arch> {
        self.root(Slot::A)
            .and_then(|e| Arch::from_root_type(e.type_guid))
    }

    /// The data partition: the Linux data partition that comes last.
    pub fn data(&self) -> Option<&'a TableEntry> {
        self.entries
            .iter()
            .filter(|e| e.type_guid == types::LINUX_GENERIC)
            .max_by_key(|e| e.first_lba)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(arch: Arch, bios: bool) -> LayoutParams {
        LayoutParams {
            arch,
            bios,
            esp_size: 256 << 20,
            slot_size: 1 << 30,
            data_size: 256 << 20,
            data_label: "data".into(),
        }
    }

    #[test]
    fn default_layout_has_two_equal_slots_and_data_last() {
        let parts = partitions(&params(Arch::X86_64, true));
        let labels: Vec<&str> = parts.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "bios-boot",
                "esp",
                "root-a",
                "verity-a",
                "root-b",
                "verity-b",
                "data"
            ]
        );
        assert_eq!(parts[2].size, parts[4].size);
        assert_eq!(parts[3].size, parts[5].size);
        assert_eq!(
            parts[3].size,
            9 << 20,
            "a 1 GiB slot needs a 9 MiB hash partition"
        );
        assert!(parts.iter().all(|p| p.size % ALIGN == 0));
        assert_eq!(parts[2].type_guid, types::ROOT_X86_64);
        assert_eq!(parts[2].flags, FLAG_READ_ONLY);
        assert_eq!(parts[4].flags, FLAG_NO_AUTO);
    }

    #[test]
    fn arm64_has_no_bios_partition_and_its_own_types() {
        let parts = partitions(&params(Arch::Arm64, false));
        assert_eq!(parts[0].role, Role::Esp);
        assert_eq!(parts[1].type_guid, types::ROOT_ARM64);
        assert_eq!(parts[2].type_guid, types::ROOT_VERITY_ARM64);
        assert_eq!(parts.last().unwrap().role, Role::Data);
    }
}
