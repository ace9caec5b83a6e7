//! UEFI boot with systemd-boot (Debian 12: 252): `loader/loader.conf` and one Boot Loader
//! Specification entry per slot, `loader/entries/appliance-<generation>-<slot>.conf`.
//!
//! Which entry boots is decided by the names alone, as systemd-boot 252 sorts them: entries
//! with no tries left last, then by id, newest version first (`appliance-0002-b` before
//! `appliance-0001-a`); the first one boots. `loader.conf` names no `default`: systemd-boot
//! 252 compares a `default` with the id including its counter, and a pattern such as
//! `appliance-*` would match an entry with no tries left too.
//!
//! An entry on trial carries a boot counter: `appliance-0002-b+1.conf`. Before it boots it,
//! systemd-boot renames it `+0-1`; if the machine comes back without the counter having been
//! removed (the health check commits by renaming it to `appliance-0002-b.conf`), that entry
//! has no tries left, sorts last, and the previous generation boots.

use crate::esp;
use crate::Slot;

use super::SlotBoot;

/// Every entry of this project starts with this.
pub const ENTRY_PREFIX: &str = "appliance-";

/// A boot counter: tries left, and tries done once systemd-boot has spent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: Option<u32>,
}

/// The name of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub generation: u32,
    pub slot: Slot,
    /// `None`: a committed (good) entry.
    pub counter: Option<Counter>,
}

impl EntryName {
    /// A committed entry.
    pub fn committed(generation: u32, slot: Slot) -> EntryName {
        EntryName {
            generation,
            slot,
            counter: None,
        }
    }

    /// An entry with one try.
    pub fn trial(generation: u32, slot: Slot) -> EntryName {
        EntryName {
            generation,
            slot,
            counter: Some(Counter {
                left: 1,
                done: None,
            }),
        }
    }

    /// The same entry, committed (its counter removed).
    pub fn without_counter(self) -> EntryName {
        EntryName {
            counter: None,
            ..self
        }
    }

    /// The same entry with no tries left: systemd-boot never picks it while another exists.
    pub fn spent(self) -> EntryName {
        EntryName {
            counter: Some(Counter {
                left: 0,
                done: self.counter.and_then(|c| c.done),
            }),
            ..self
        }
    }

    /// The id without the counter: `appliance-0002-b`.
    pub fn id(&self) -> String {
        format!("{ENTRY_PREFIX}{:04}-{}", self.generation, self.slot)
    }

    /// The file name: `appliance-0002-b+1.conf`.
    pub fn file_name(&self) -> String {
        let counter = match self.counter {
            None => String::new(),
            Some(Counter { left, done: None }) => format!("+{left}"),
            Some(Counter {
                left,
                done: Some(d),
            }) => format!("+{left}-{d}"),
        };
        format!("{}{counter}.conf", self.id())
    }

    /// The path on the ESP.
    pub fn path(&self) -> String {
        format!("{}/{}", esp::LOADER_ENTRIES_DIR, self.file_name())
    }

    /// Reads a file name of this form; anything else is `None`.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let stem = file_name.strip_suffix(".conf")?;
        let rest = stem.strip_prefix(ENTRY_PREFIX)?;
        let (id, counter) = match rest.split_once('+') {
            None => (rest, None),
            Some((id, c)) => {
                let (left, done) = match c.split_once('-') {
                    None => (c, None),
                    Some((l, d)) => (l, Some(number(d)?)),
                };
                (
                    id,
                    Some(Counter {
                        left: number(left)?,
                        done,
                    }),
                )
            }
        };
        let (generation, slot) = id.split_once('-')?;
        Some(EntryName {
            generation: number(generation)?,
            slot: Slot::parse(slot).filter(|_| slot.len() == 1)?,
            counter,
        })
    }

    /// No tries left: systemd-boot sorts it last.
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }

    /// Still counting: not committed yet.
    pub fn on_trial(&self) -> bool {
        self.counter.is_some()
    }
}

fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The entries named in a directory listing, ignoring other files.
pub fn entries<'a>(file_names: impl IntoIterator<Item = &'a str>) -> Vec<EntryName> {
    file_names
        .into_iter()
        .filter_map(EntryName::parse)
        .collect()
}

/// The entries in the order systemd-boot 252 shows them: no tries left last, then newest
/// generation first. The first one is the one it boots.
pub fn boot_order(entries: &[EntryName]) -> Vec<EntryName> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| {
        (
            e.is_bad(),
            std::cmp::Reverse(e.generation),
            std::cmp::Reverse(e.slot),
        )
    });
    sorted
}

/// The entry systemd-boot boots next.
pub fn next_boot(entries: &[EntryName]) -> Option<EntryName> {
    boot_order(entries).into_iter().next()
}

/// The newest entry of `slot` (the machine keeps one per slot).
pub fn of_slot(entries: &[EntryName], slot: Slot) -> Option<EntryName> {
    entries
        .iter()
        .filter(|e| e.slot == slot)
        .max_by_key(|e| e.generation)
        .copied()
}

/// The generation a newly written entry gets: one more than any on the ESP.
pub fn next_generation(entries: &[EntryName]) -> u32 {
    entries
        .iter()
        .map(|e| e.generation)
        .max()
        .map_or(super::FIRST_GENERATION, |g| g + 1)
}

/// `loader/loader.conf`: no `default` (see the module's documentation), no editor (the
/// command line is part of what dm-verity's root hash protects), the console as it is.
pub fn loader_conf(timeout_secs: u32) -> String {
    format!("timeout {timeout_secs}\nconsole-mode keep\neditor no\n")
}

/// The entry of a slot.
pub fn entry(boot: &SlotBoot) -> String {
    format!(
        "title {}\nversion {}\nlinux /{}\ninitrd /{}\noptions {}\n",
        boot.title(),
        boot.kernel_version,
        esp::kernel(boot.slot),
        esp::initrd(boot.slot),
        boot.cmdline()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_and_without_counters() {
        let first = EntryName::committed(1, Slot::A);
        assert_eq!(first.file_name(), "appliance-0001-a.conf");
        assert_eq!(first.path(), "loader/entries/appliance-0001-a.conf");
        let trial = EntryName::trial(2, Slot::B);
        assert_eq!(trial.file_name(), "appliance-0002-b+1.conf");
        // What systemd-boot renames it to before it boots it.
        let tried = EntryName::parse("appliance-0002-b+0-1.conf").unwrap();
        assert_eq!(
            tried.counter,
            Some(Counter {
                left: 0,
                done: Some(1)
            })
        );
        assert!(tried.is_bad() && tried.on_trial());
        assert_eq!(tried.without_counter().file_name(), "appliance-0002-b.conf");
        assert_eq!(trial.spent().file_name(), "appliance-0002-b+0.conf");
        assert_eq!(tried.spent().file_name(), "appliance-0002-b+0-1.conf");
        for n in [first, trial, tried] {
            assert_eq!(EntryName::parse(&n.file_name()), Some(n));
        }
        assert_eq!(
            EntryName::parse("appliance-10000-a.conf")
                .unwrap()
                .generation,
            10000
        );
        for other in [
            "appliance-a.conf",
            "appliance-0001-c.conf",
            "appliance-0001-ab.conf",
            "appliance-0001-a+.conf",
            "appliance-0001-a+x.conf",
            "appliance-0001-a+1-.conf",
            "debian.conf",
            "appliance-0001-a.conf.tmp",
            ".appliance-0001-a.conf.tmp",
        ] {
            assert_eq!(EntryName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn the_newest_good_entry_boots_and_a_spent_trial_falls_back() {
        let names = |list: &[&str]| entries(list.iter().copied());
        // The first image.
        let e = names(&["appliance-0001-a.conf"]);
        assert_eq!(next_boot(&e).unwrap().slot, Slot::A);
        assert_eq!(next_generation(&e), 2);
        // An update armed in slot B: tried first.
        let e = names(&["appliance-0001-a.conf", "appliance-0002-b+1.conf"]);
        assert_eq!(
            next_boot(&e).unwrap().file_name(),
            "appliance-0002-b+1.conf"
        );
        // systemd-boot spent the try and the machine came back uncommitted: slot A boots.
        let e = names(&["appliance-0001-a.conf", "appliance-0002-b+0-1.conf"]);
        assert_eq!(next_boot(&e).unwrap().file_name(), "appliance-0001-a.conf");
        assert_eq!(
            boot_order(&e).last().unwrap().file_name(),
            "appliance-0002-b+0-1.conf"
        );
        // Committed: slot B boots from now on; a later update of slot A is generation 3.
        let e = names(&["appliance-0001-a.conf", "appliance-0002-b.conf"]);
        assert_eq!(next_boot(&e).unwrap().slot, Slot::B);
        assert_eq!(next_generation(&e), 3);
        let e = names(&["appliance-0003-a+1.conf", "appliance-0002-b.conf"]);
        assert_eq!(next_boot(&e).unwrap().slot, Slot::A);
        // Generations are numbers, not text: 10 is newer than 9.
        let e = names(&["appliance-0009-a.conf", "appliance-0010-b.conf"]);
        assert_eq!(next_boot(&e).unwrap().slot, Slot::B);
        assert_eq!(of_slot(&e, Slot::A).unwrap().generation, 9);
        assert_eq!(next_generation(&[]), 1);
    }

    #[test]
    fn loader_conf_names_no_default() {
        let c = loader_conf(3);
        assert!(!c.contains("default"), "{c}");
        assert!(
            c.contains("timeout 3\n") && c.contains("editor no\n"),
            "{c}"
        );
        let e = entry(&crate::bootcfg::tests::sample(Slot::B));
        assert!(e.starts_with("title meet 2.0.0 (slot b)\nversion 6.1.0-28-amd64\n"));
        assert!(e.contains("\nlinux /appliance-b/vmlinuz\ninitrd /appliance-b/initrd.img\n"));
        assert!(e.contains("\noptions roothash="), "{e}");
        assert!(e.ends_with("console=ttyS0,115200\n"), "{e}");
    }
}
