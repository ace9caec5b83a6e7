//! The boot configuration on the mounted ESP, for every boot loader the image carries
//! (systemd-boot, GRUB, the Raspberry Pi firmware): what each says about the slots, and the
//! changes an update makes to it. The formats are [`appliance_spec::bootcfg`]'s.
//!
//! Every change keeps the other loaders consistent, so the machine behaves the same whichever
//! firmware starts it next. Files are replaced atomically (temporary file, fsync, rename,
//! fsync of the directory); the entry that makes a firmware try a slot is written last.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use appliance_spec::bootcfg::grub::{self, GrubEnv, SlotEnv};
use appliance_spec::bootcfg::raspberry_pi as pi;
use appliance_spec::bootcfg::systemd_boot::{self, EntryName};
use appliance_spec::bootcfg::SlotBoot;
use appliance_spec::esp;
use appliance_spec::esp::raspberry_pi::{CONFIG_TXT, TRYBOOT_TXT};
use appliance_spec::Slot;
use serde::Serialize;

use crate::fsutil;

/// The firmware that started this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// UEFI: systemd-boot.
    Uefi,
    /// Legacy BIOS: GRUB.
    Bios,
    /// The Raspberry Pi's own firmware.
    RaspberryPi,
}

impl Firmware {
    /// UEFI firmware shows in /sys/firmware/efi; the Pi's firmware leaves its boot state in the
    /// device tree; anything else started GRUB from the MBR.
    pub fn detect(paths: &crate::paths::Paths) -> Firmware {
        if paths.at("/sys/firmware/efi").exists() {
            Firmware::Uefi
        } else if paths.at("/proc/device-tree/chosen/bootloader").exists() {
            Firmware::RaspberryPi
        } else {
            Firmware::Bios
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Firmware::Uefi => "UEFI (systemd-boot)",
            Firmware::Bios => "BIOS (GRUB)",
            Firmware::RaspberryPi => "Raspberry Pi firmware",
        }
    }
}

/// What the boot configuration of one firmware says about a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotBootState {
    /// Nothing boots it.
    NotBootable,
    /// It boots when chosen (committed).
    Good,
    /// The next boot tries it once.
    Armed,
    /// Its trial boot started and was not committed (yet).
    Tried,
}

/// The mounted ESP.
pub struct Esp {
    pub dir: PathBuf,
}

impl Esp {
    pub fn new(dir: impl Into<PathBuf>) -> Esp {
        Esp { dir: dir.into() }
    }

    fn path(&self, esp_path: &str) -> PathBuf {
        self.dir.join(esp_path)
    }

    pub fn has_systemd_boot(&self) -> bool {
        self.path(esp::LOADER_CONF).exists()
    }

    pub fn has_grub(&self) -> bool {
        self.path(esp::GRUB_CFG).exists()
    }

    pub fn has_raspberry_pi(&self) -> bool {
        self.path(CONFIG_TXT).exists()
    }

    /// The systemd-boot entries on the ESP.
    pub fn entries(&self) -> Result<Vec<EntryName>> {
        let dir = self.path(esp::LOADER_ENTRIES_DIR);
        let names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(list) => list
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        Ok(systemd_boot::entries(names.iter().map(String::as_str)))
    }

    /// GRUB's environment and the slot choice in it; `None` without GRUB.
    pub fn grub_env(&self) -> Result<Option<(GrubEnv, SlotEnv)>> {
        if !self.has_grub() {
            return Ok(None);
        }
        let env = match std::fs::read(self.path(esp::GRUBENV)) {
            Ok(block) => {
                GrubEnv::parse(&block).with_context(|| format!("{} on the ESP", esp::GRUBENV))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GrubEnv::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", esp::GRUBENV)),
        };
        let slots = SlotEnv::from_env(&env);
        Ok(Some((env, slots)))
    }

    fn save_grub(&self, mut env: GrubEnv, slots: &SlotEnv) -> Result<()> {
        slots.write_to(&mut env);
        fsutil::atomic_write_on_fat(&self.path(esp::GRUBENV), &env.to_block()?)
    }

    /// Changes GRUB's slot choice, when the image boots with GRUB.
    fn change_grub(&self, change: impl FnOnce(&mut SlotEnv)) -> Result<()> {
        if let Some((env, mut slots)) = self.grub_env()? {
            change(&mut slots);
            self.save_grub(env, &slots)?;
        }
        Ok(())
    }

    /// The slot a Raspberry Pi file (config.txt, tryboot.txt) names.
    fn pi_slot(&self, file: &str) -> Option<Slot> {
        std::fs::read_to_string(self.path(file))
            .ok()
            .as_deref()
            .and_then(pi::slot_of)
    }

    fn remove(&self, esp_path: &str) -> Result<()> {
        fsutil::remove_if_exists(&self.path(esp_path)).map(|_| ())
    }

    fn rename_entry(&self, from: EntryName, to: EntryName) -> Result<()> {
        if from == to {
            return Ok(());
        }
        let (a, b) = (self.path(&from.path()), self.path(&to.path()));
        std::fs::rename(&a, &b)
            .with_context(|| format!("cannot rename {} to {}", from.path(), to.path()))?;
        fsutil::sync_dir(&self.path(esp::LOADER_ENTRIES_DIR))
    }

    /// What the configuration of `firmware` says about `slot`.
    pub fn state(&self, firmware: Firmware, slot: Slot) -> Result<SlotBootState> {
        Ok(match firmware {
            Firmware::Uefi => match systemd_boot::of_slot(&self.entries()?, slot) {
                None => SlotBootState::NotBootable,
                Some(e) => match e.counter {
                    None => SlotBootState::Good,
                    Some(c) if c.left > 0 => SlotBootState::Armed,
                    Some(c) if c.done.is_some() => SlotBootState::Tried,
                    Some(_) => SlotBootState::NotBootable,
                },
            },
            Firmware::Bios => match self.grub_env()? {
                None => SlotBootState::NotBootable,
                Some((_, env)) => {
                    let f = env.flags(slot);
                    match (f.ok, env.on_trial(slot), f.tried) {
                        (false, _, _) => SlotBootState::NotBootable,
                        (true, true, false) => SlotBootState::Armed,
                        (true, true, true) => SlotBootState::Tried,
                        (true, false, _) => SlotBootState::Good,
                    }
                }
            },
            Firmware::RaspberryPi => {
                if self.pi_slot(TRYBOOT_TXT) == Some(slot) {
                    SlotBootState::Armed
                } else if self.pi_slot(CONFIG_TXT) == Some(slot)
                    || self.path(&pi::cmdline_path(slot)).exists()
                {
                    SlotBootState::Good
                } else {
                    SlotBootState::NotBootable
                }
            }
        })
    }

    /// The slot `firmware` boots next (a plain reboot; on the Pi, `reboot '0 tryboot'` boots
    /// tryboot.txt's slot instead).
    pub fn next_boot(&self, firmware: Firmware) -> Result<Option<Slot>> {
        Ok(match firmware {
            Firmware::Uefi => systemd_boot::next_boot(&self.entries()?).map(|e| e.slot),
            Firmware::Bios => self.grub_env()?.map(|(_, env)| env.boot().0),
            Firmware::RaspberryPi => self.pi_slot(CONFIG_TXT),
        })
    }

    /// Before `slot` is written: no loader may boot it (its entry names files about to be
    /// overwritten), and no loader prefers it.
    pub fn disable(&self, slot: Slot) -> Result<()> {
        for e in self.entries()?.into_iter().filter(|e| e.slot == slot) {
            self.remove(&e.path())?;
        }
        self.change_grub(|env| env.disable(slot))?;
        if self.pi_slot(TRYBOOT_TXT) == Some(slot) {
            self.remove(TRYBOOT_TXT)?;
        }
        if self.has_raspberry_pi() && self.pi_slot(CONFIG_TXT) == Some(slot) {
            fsutil::atomic_write_on_fat(
                &self.path(CONFIG_TXT),
                pi::config_txt(slot.other()).as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Removes everything in `slot`'s directory (a disabled slot), and makes it again.
    pub fn clear_slot_dir(&self, slot: Slot) -> Result<PathBuf> {
        let dir = self.path(&esp::slot_dir(slot));
        if dir.exists() {
            for e in
                std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let e = e?;
                if e.file_type()?.is_dir() {
                    std::fs::remove_dir_all(e.path())?;
                } else {
                    std::fs::remove_file(e.path())?;
                }
            }
            fsutil::sync_dir(&dir)?;
        } else {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(dir)
    }

    fn slot_dir(&self, slot: Slot) -> Result<PathBuf> {
        let dir = self.path(&esp::slot_dir(slot));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// Writes one file of a slot's directory from `data`.
    pub fn write_slot_file(&self, slot: Slot, name: &str, data: &mut dyn Read) -> Result<u64> {
        fsutil::atomic_copy_on_fat(&self.slot_dir(slot)?.join(name), data)
    }

    /// The loader files of a slot (its kernel and initrd are written already): GRUB's
    /// fragment, the Pi's cmdline.txt.
    pub fn write_slot_config(&self, boot: &SlotBoot) -> Result<()> {
        self.slot_dir(boot.slot)?;
        if self.has_grub() {
            fsutil::atomic_write_on_fat(
                &self.path(&esp::slot_grub_cfg(boot.slot)),
                grub::slot_cfg(boot).as_bytes(),
            )?;
        }
        if self.has_raspberry_pi() {
            fsutil::atomic_write_on_fat(
                &self.path(&pi::cmdline_path(boot.slot)),
                pi::cmdline_txt(boot).as_bytes(),
            )?;
        }
        Ok(())
    }

    /// One trial boot of `boot.slot` as `generation`: last, the entries that make each
    /// firmware try it.
    pub fn arm(&self, boot: &SlotBoot, generation: u32) -> Result<()> {
        self.change_grub(|env| env.arm(boot.slot))?;
        if self.has_raspberry_pi() {
            fsutil::atomic_write_on_fat(
                &self.path(TRYBOOT_TXT),
                pi::config_txt(boot.slot).as_bytes(),
            )?;
        }
        if self.has_systemd_boot() {
            std::fs::create_dir_all(self.path(esp::LOADER_ENTRIES_DIR))?;
            fsutil::atomic_write_on_fat(
                &self.path(&EntryName::trial(generation, boot.slot).path()),
                systemd_boot::entry(boot).as_bytes(),
            )?;
        }
        Ok(())
    }

    /// `slot` proved healthy: every firmware boots it from now on.
    pub fn commit(&self, slot: Slot) -> Result<()> {
        if let Some(e) = systemd_boot::of_slot(&self.entries()?, slot) {
            self.rename_entry(e, e.without_counter())?;
        }
        self.change_grub(|env| env.commit(slot))?;
        if self.has_raspberry_pi() {
            if self.pi_slot(CONFIG_TXT) != Some(slot) {
                fsutil::atomic_write_on_fat(
                    &self.path(CONFIG_TXT),
                    pi::config_txt(slot).as_bytes(),
                )?;
            }
            if self.pi_slot(TRYBOOT_TXT) == Some(slot) {
                self.remove(TRYBOOT_TXT)?;
            }
        }
        Ok(())
    }

    /// `slot` failed its trial: no firmware boots it again (systemd-boot keeps the entry with
    /// no tries left, which sorts last).
    pub fn reject(&self, slot: Slot) -> Result<()> {
        if let Some(e) = systemd_boot::of_slot(&self.entries()?, slot) {
            if e.on_trial() {
                self.rename_entry(e, e.spent())?;
            }
        }
        self.change_grub(|env| env.reject(slot))?;
        if self.pi_slot(TRYBOOT_TXT) == Some(slot) {
            self.remove(TRYBOOT_TXT)?;
        }
        Ok(())
    }

    /// `update rollback`: the committed `slot` boots from the next boot on, as `generation`.
    pub fn make_default(&self, slot: Slot, generation: u32) -> Result<()> {
        if let Some(e) = systemd_boot::of_slot(&self.entries()?, slot) {
            self.rename_entry(e, EntryName::committed(generation, slot))?;
        }
        self.change_grub(|env| env.commit(slot))?;
        if self.has_raspberry_pi() {
            fsutil::atomic_write_on_fat(&self.path(CONFIG_TXT), pi::config_txt(slot).as_bytes())?;
        }
        Ok(())
    }

    /// Flushes what was written (the caller unmounts next).
    pub fn sync(&self) {
        fsutil::sync_all();
    }
}

/// Whether `path` (the Pi firmware's tryboot flag) says this boot read tryboot.txt.
pub fn booted_tryboot(flag: &Path) -> bool {
    std::fs::read(flag).is_ok_and(|b| pi::is_tryboot(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_spec::bootcfg::raspberry_pi::config_txt;

    /// An ESP as the build writes it for every loader: slot A, generation 1.
    fn first_image_esp(dir: &Path) -> Esp {
        crate::update::testing::first_image_esp(dir);
        Esp::new(dir)
    }

    fn all(esp: &Esp, slot: Slot) -> [SlotBootState; 3] {
        [Firmware::Uefi, Firmware::Bios, Firmware::RaspberryPi].map(|f| esp.state(f, slot).unwrap())
    }

    fn next(esp: &Esp) -> [Option<Slot>; 3] {
        [Firmware::Uefi, Firmware::Bios, Firmware::RaspberryPi].map(|f| esp.next_boot(f).unwrap())
    }

    #[test]
    fn an_update_is_disabled_written_armed_and_committed_on_every_loader() {
        use SlotBootState::*;
        let d = tempfile::tempdir().unwrap();
        let esp = first_image_esp(d.path());
        assert_eq!(all(&esp, Slot::A), [Good, Good, Good]);
        assert_eq!(all(&esp, Slot::B), [NotBootable; 3]);
        esp.disable(Slot::B).unwrap();
        let dir = esp.clear_slot_dir(Slot::B).unwrap();
        assert!(dir.is_dir());
        let boot = crate::update::testing::sample_boot(Slot::B);
        esp.write_slot_file(Slot::B, "vmlinuz", &mut &b"kernel b"[..])
            .unwrap();
        esp.write_slot_config(&boot).unwrap();
        assert!(d.path().join("appliance-b/grub.cfg").exists());
        assert!(d.path().join("appliance-b/cmdline.txt").exists());
        // Written but not armed: nothing boots it yet (the Pi sees the files, but neither
        // config.txt nor tryboot.txt names the slot).
        assert_eq!(next(&esp), [Some(Slot::A); 3]);
        esp.arm(&boot, 2).unwrap();
        assert!(d
            .path()
            .join("loader/entries/appliance-0002-b+1.conf")
            .exists());
        assert_eq!(all(&esp, Slot::B), [Armed, Armed, Armed]);
        assert_eq!(next(&esp), [Some(Slot::B), Some(Slot::B), Some(Slot::A)]);
        // The firmware spends the try (systemd-boot renames, GRUB saves).
        std::fs::rename(
            d.path().join("loader/entries/appliance-0002-b+1.conf"),
            d.path().join("loader/entries/appliance-0002-b+0-1.conf"),
        )
        .unwrap();
        let (env, slots) = esp.grub_env().unwrap().unwrap();
        esp.save_grub(env, &slots.boot().1).unwrap();
        assert_eq!(all(&esp, Slot::B)[..2], [Tried, Tried]);
        esp.commit(Slot::B).unwrap();
        assert!(d
            .path()
            .join("loader/entries/appliance-0002-b.conf")
            .exists());
        assert!(!d.path().join(TRYBOOT_TXT).exists());
        assert_eq!(all(&esp, Slot::B), [Good; 3]);
        assert_eq!(next(&esp), [Some(Slot::B); 3]);
        // A rollback to slot A: generation 3, everywhere.
        esp.make_default(Slot::A, 3).unwrap();
        assert!(d
            .path()
            .join("loader/entries/appliance-0003-a.conf")
            .exists());
        assert_eq!(next(&esp), [Some(Slot::A); 3]);
    }

    #[test]
    fn a_failed_trial_is_rejected_and_the_committed_slot_boots() {
        use SlotBootState::*;
        let d = tempfile::tempdir().unwrap();
        let esp = first_image_esp(d.path());
        let boot = crate::update::testing::sample_boot(Slot::B);
        esp.disable(Slot::B).unwrap();
        esp.write_slot_config(&boot).unwrap();
        esp.arm(&boot, 2).unwrap();
        std::fs::rename(
            d.path().join("loader/entries/appliance-0002-b+1.conf"),
            d.path().join("loader/entries/appliance-0002-b+0-1.conf"),
        )
        .unwrap();
        esp.reject(Slot::B).unwrap();
        assert_eq!(all(&esp, Slot::B), [Tried, NotBootable, Good]);
        assert_eq!(next(&esp), [Some(Slot::A); 3]);
        assert!(!d.path().join(TRYBOOT_TXT).exists());
        // Written again later: the old entry goes before anything else.
        esp.disable(Slot::B).unwrap();
        assert!(esp.entries().unwrap().iter().all(|e| e.slot == Slot::A));
    }

    #[test]
    fn disabling_the_slot_config_txt_names_points_it_at_the_other() {
        let d = tempfile::tempdir().unwrap();
        let esp = first_image_esp(d.path());
        std::fs::write(d.path().join(CONFIG_TXT), config_txt(Slot::B)).unwrap();
        esp.disable(Slot::B).unwrap();
        assert_eq!(esp.next_boot(Firmware::RaspberryPi).unwrap(), Some(Slot::A));
    }

    #[test]
    fn firmware_is_told_apart_by_what_it_leaves_in_sys_and_proc() {
        let d = tempfile::tempdir().unwrap();
        let paths = crate::paths::Paths::new(d.path());
        assert_eq!(Firmware::detect(&paths), Firmware::Bios);
        std::fs::create_dir_all(paths.at("/proc/device-tree/chosen/bootloader")).unwrap();
        assert_eq!(Firmware::detect(&paths), Firmware::RaspberryPi);
        let flag = paths.at(pi::TRYBOOT_FLAG);
        assert!(!booted_tryboot(&flag));
        std::fs::write(&flag, [0, 0, 0, 1]).unwrap();
        assert!(booted_tryboot(&flag));
        std::fs::create_dir_all(paths.at("/sys/firmware/efi")).unwrap();
        assert_eq!(Firmware::detect(&paths), Firmware::Uefi);
    }
}
