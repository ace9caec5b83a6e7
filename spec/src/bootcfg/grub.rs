//! Legacy BIOS boot with GRUB (Debian 12: 2.06): a static `grub/grub.cfg`, the slot choice in
//! `grub/grubenv`, and each slot's `linux`/`initrd` lines in its own directory
//! (`appliance-<slot>/grub.cfg`).
//!
//! The environment holds `ORDER` (the slots, preferred first), `<slot>_OK` (1: the slot holds
//! a system that may boot), `<slot>_TRY` (1: it was tried and not confirmed) and `TRIAL` (the
//! slot on trial, or `none`). grub.cfg boots the first slot of `ORDER` with `OK=1` and `TRY=0`;
//! when that is the slot on trial it saves `<slot>_TRY=1` before booting, so a trial that
//! never confirms is skipped on the next boot. The names follow RAUC's GRUB integration; unlike
//! RAUC, a committed slot is not marked at every boot (only `TRIAL` is), so a committed
//! system never falls back because one boot went wrong, as with systemd-boot.
//!
//! GRUB's script has no arithmetic and no indirect variables: the choice is made with if-chains.
//! `save_env` only works on a plain file system, here the ESP (FAT).

use anyhow::{bail, Result};

use crate::esp;
use crate::Slot;

use super::SlotBoot;

/// Size of GRUB's environment block.
pub const ENV_SIZE: usize = 1024;
/// Its first line.
pub const ENV_HEADER: &str = "# GRUB Environment Block\n";

/// The variables of a GRUB environment block, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: Vec<(String, String)>,
}

impl GrubEnv {
    /// Reads a block as `grub-editenv` and GRUB's `save_env` write it.
    pub fn parse(block: &[u8]) -> Result<GrubEnv> {
        if !block.starts_with(ENV_HEADER.as_bytes()) {
            bail!("not a GRUB environment block (it does not start with {ENV_HEADER:?})");
        }
        if block.len() != ENV_SIZE {
            bail!(
                "a GRUB environment block of {} bytes, not {ENV_SIZE}",
                block.len()
            );
        }
        let text = String::from_utf8_lossy(&block[ENV_HEADER.len()..]);
        let mut env = GrubEnv::default();
        for line in text.split('\n') {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            env.set(name, &unescape(value));
        }
        Ok(env)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
    }

    /// The 1024-byte block: header, `name=value` lines, `#` up to the end.
    pub fn to_block(&self) -> Result<Vec<u8>> {
        let mut out = ENV_HEADER.as_bytes().to_vec();
        for (name, value) in &self.vars {
            if name.is_empty() || name.contains(['=', '\n', '\\']) {
                bail!("{name:?} cannot be a GRUB environment variable name");
            }
            if value.contains('\n') {
                bail!(
                    "the value of {name} has a line break; GRUB's environment holds one line each"
                );
            }
            out.extend_from_slice(format!("{name}={}\n", escape(value)).as_bytes());
        }
        if out.len() > ENV_SIZE {
            bail!(
                "the GRUB environment needs {} bytes, more than the block's {ENV_SIZE}",
                out.len()
            );
        }
        out.resize(ENV_SIZE, b'#');
        Ok(out)
    }
}

/// GRUB escapes a backslash in a value with a backslash.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\")
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One slot's flags in the environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotFlags {
    /// `<slot>_OK`: it holds a system that may boot.
    pub ok: bool,
    /// `<slot>_TRY`: it was tried and has not confirmed.
    pub tried: bool,
}

/// The slot choice kept in grubenv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotEnv {
    /// Preferred first.
    pub order: [Slot; 2],
    pub a: SlotFlags,
    pub b: SlotFlags,
    /// The slot on trial.
    pub trial: Option<Slot>,
}

impl SlotEnv {
    /// The first image: slot A, nothing in slot B. Also what grub.cfg assumes when grubenv
    /// cannot be read.
    pub fn first_image() -> SlotEnv {
        SlotEnv {
            order: [Slot::A, Slot::B],
            a: SlotFlags {
                ok: true,
                tried: false,
            },
            b: SlotFlags::default(),
            trial: None,
        }
    }

    pub fn flags(&self, slot: Slot) -> SlotFlags {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    fn flags_mut(&mut self, slot: Slot) -> &mut SlotFlags {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    fn prefer(&mut self, slot: Slot) {
        self.order = [slot, slot.other()];
    }

    /// Before a slot is written: it must not boot until it is armed again.
    pub fn disable(&mut self, slot: Slot) {
        *self.flags_mut(slot) = SlotFlags::default();
        if self.trial == Some(slot) {
            self.trial = None;
        }
        self.prefer(slot.other());
    }

    /// One trial boot of `slot`, preferred over the other.
    pub fn arm(&mut self, slot: Slot) {
        *self.flags_mut(slot) = SlotFlags {
            ok: true,
            tried: false,
        };
        self.trial = Some(slot);
        self.prefer(slot);
    }

    /// `slot` proved healthy: it boots from now on.
    pub fn commit(&mut self, slot: Slot) {
        self.flags_mut(slot).tried = false;
        self.flags_mut(slot).ok = true;
        if self.trial == Some(slot) {
            self.trial = None;
        }
        self.prefer(slot);
    }

    /// `slot` failed: never boot it again.
    pub fn reject(&mut self, slot: Slot) {
        self.disable(slot);
    }

    /// Whether `slot` is on a trial that has not been tried yet, tried, or not on trial.
    pub fn on_trial(&self, slot: Slot) -> bool {
        self.trial == Some(slot)
    }

    /// What grub.cfg does with this environment: the slot it boots, and the environment it
    /// saves first (a trial is marked as tried). Mirrors [`main_cfg`]'s script.
    pub fn boot(&self) -> (Slot, SlotEnv) {
        let pick = |need_untried: bool| {
            self.order.into_iter().find(|s| {
                let f = self.flags(*s);
                f.ok && (!need_untried || !f.tried)
            })
        };
        let slot = pick(true).or_else(|| pick(false)).unwrap_or(Slot::A);
        let mut after = *self;
        if self.trial == Some(slot) {
            after.flags_mut(slot).tried = true;
        }
        (slot, after)
    }

    /// Reads the choice; a missing or unreadable value takes grub.cfg's default.
    pub fn from_env(env: &GrubEnv) -> SlotEnv {
        let default = SlotEnv::first_image();
        let order: Vec<Slot> = env
            .get("ORDER")
            .map(|o| o.split_whitespace().filter_map(Slot::parse).collect())
            .unwrap_or_default();
        let order = match order.as_slice() {
            [first, second, ..] if first != second => [*first, *second],
            [first] => [*first, first.other()],
            _ => default.order,
        };
        let flag = |name: String, default: bool| match env.get(&name) {
            Some("1") => true,
            Some("0") => false,
            _ => default,
        };
        let flags = |slot: Slot, d: SlotFlags| SlotFlags {
            ok: flag(format!("{slot}_OK"), d.ok),
            tried: flag(format!("{slot}_TRY"), d.tried),
        };
        SlotEnv {
            order,
            a: flags(Slot::A, default.a),
            b: flags(Slot::B, default.b),
            trial: env.get("TRIAL").and_then(Slot::parse),
        }
    }

    /// Writes the choice into `env`, keeping any other variables.
    pub fn write_to(&self, env: &mut GrubEnv) {
        let bit = |b: bool| if b { "1" } else { "0" };
        env.set("ORDER", &format!("{} {}", self.order[0], self.order[1]));
        for slot in Slot::ALL {
            env.set(&format!("{slot}_OK"), bit(self.flags(slot).ok));
            env.set(&format!("{slot}_TRY"), bit(self.flags(slot).tried));
        }
        env.set(
            "TRIAL",
            &self.trial.map_or("none".to_string(), |s| s.to_string()),
        );
    }

    /// The whole 1024-byte grubenv for this choice.
    pub fn to_block(&self) -> Result<Vec<u8>> {
        let mut env = GrubEnv::default();
        self.write_to(&mut env);
        env.to_block()
    }
}

/// GRUB script single-quoting: `'` itself is written as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `if` lines that set `var` to the slot `candidate` names, when that slot's flags allow.
fn pick_lines(candidate: &str, need_untried: bool, indent: &str) -> String {
    let mut s = String::new();
    for slot in Slot::ALL {
        let untried = if need_untried {
            format!(" if [ \"${slot}_TRY\" = 0 ]; then")
        } else {
            String::new()
        };
        let close = if need_untried { " fi;" } else { "" };
        s.push_str(&format!(
            "{indent}if [ \"${candidate}\" = {slot} ]; then if [ \"${slot}_OK\" = 1 ]; then{untried} set slot={slot};{close} fi; fi\n"
        ));
    }
    s
}

/// `grub/grub.cfg`: the same for every version. Terminals (serial unit 0 at 115200 and the
/// screen), then the slot choice from grubenv, then one menu entry that sources the chosen
/// slot's `linux` and `initrd` lines.
pub fn main_cfg(image_name: &str, timeout_secs: u32) -> String {
    let first = SlotEnv::first_image();
    let defaults: String = std::iter::once(format!(
        "set ORDER=\"{} {}\"\n",
        first.order[0], first.order[1]
    ))
    .chain(Slot::ALL.iter().map(|s| {
        let f = first.flags(*s);
        format!(
            "set {s}_OK={}\nset {s}_TRY={}\n",
            u8::from(f.ok),
            u8::from(f.tried)
        )
    }))
    .chain(std::iter::once("set TRIAL=none\n".to_string()))
    .collect();
    let vars = "ORDER a_OK a_TRY b_OK b_TRY TRIAL";
    format!(
        "# Written by appliance. The root slot comes from {env} (docs/updates.md, \"BIOS\"):\n\
         # the first slot of ORDER that holds a system (<slot>_OK=1) and was not tried\n\
         # (<slot>_TRY=0). The slot on trial (TRIAL) is marked as tried before it boots.\n\
         serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set default=0\n\
         set timeout={timeout_secs}\n\
         \n\
         {defaults}\
         load_env --file $prefix/grubenv {vars}\n\
         \n\
         set slot=\n\
         for candidate in $ORDER; do\n\
         \x20   if [ -z \"$slot\" ]; then\n\
         {untried}\
         \x20   fi\n\
         done\n\
         # Every slot was tried: the first that holds a system, rather than no system at all.\n\
         if [ -z \"$slot\" ]; then\n\
         \x20   for candidate in $ORDER; do\n\
         \x20       if [ -z \"$slot\" ]; then\n\
         {any}\
         \x20       fi\n\
         \x20   done\n\
         fi\n\
         if [ -z \"$slot\" ]; then set slot=a; fi\n\
         \n\
         if [ \"$slot\" = \"$TRIAL\" ]; then\n\
         \x20   if [ \"$slot\" = a ]; then set a_TRY=1; fi\n\
         \x20   if [ \"$slot\" = b ]; then set b_TRY=1; fi\n\
         \x20   save_env --file $prefix/grubenv a_TRY b_TRY\n\
         fi\n\
         export slot\n\
         \n\
         menuentry {title} {{\n\
         \x20   source /appliance-$slot/grub.cfg\n\
         }}\n",
        env = esp::GRUBENV,
        untried = pick_lines("candidate", true, "        "),
        any = pick_lines("candidate", false, "            "),
        title = quote(image_name),
    )
}

/// A slot's `appliance-<slot>/grub.cfg`: its kernel with its command line, and its initrd.
pub fn slot_cfg(boot: &SlotBoot) -> String {
    // Every word is single-quoted so GRUB's shell-like parser passes `$`, `;`, `"` through.
    let args: Vec<String> = boot.cmdline().split_whitespace().map(quote).collect();
    format!(
        "echo {said}\nlinux /{kernel} {args}\ninitrd /{initrd}\n",
        said = quote(&format!("Booting {}", boot.title())),
        kernel = esp::kernel(boot.slot),
        initrd = esp::initrd(boot.slot),
        args = args.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_1024_bytes_padded_with_hashes_and_round_trips() {
        let mut env = GrubEnv::default();
        env.set("ORDER", "b a");
        env.set("odd", "back\\slash");
        let block = env.to_block().unwrap();
        assert_eq!(block.len(), ENV_SIZE);
        assert!(block.starts_with(b"# GRUB Environment Block\nORDER=b a\nodd=back\\\\slash\n#"));
        let mut two_lines = GrubEnv::default();
        two_lines.set("x", "a\nb");
        assert!(two_lines.to_block().is_err());
        assert!(block.ends_with(b"####"));
        assert_eq!(GrubEnv::parse(&block).unwrap(), env);
        let mut big = GrubEnv::default();
        big.set("x", &"y".repeat(1000));
        assert!(big.to_block().is_err());
        assert!(GrubEnv::parse(b"ORDER=a").is_err());
        assert!(GrubEnv::parse(&block[..1000]).is_err());
    }

    /// The block `grub-editenv` writes is read the same way.
    #[test]
    fn reads_what_grub_editenv_writes() {
        let editenv = ["/usr/bin/grub-editenv", "/bin/grub-editenv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "grub-editenv is missing: run `appliance doctor --install` (package grub-common)",
            );
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("grubenv");
        let run = |args: &[&str]| {
            let ok = std::process::Command::new(editenv)
                .arg(&f)
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "grub-editenv {args:?}");
        };
        run(&["create"]);
        run(&["set", "ORDER=b a", "b_OK=1", "b_TRY=0", "TRIAL=b"]);
        let env = GrubEnv::parse(&std::fs::read(&f).unwrap()).unwrap();
        let choice = SlotEnv::from_env(&env);
        assert_eq!(choice.order, [Slot::B, Slot::A]);
        assert!(choice.b.ok && !choice.b.tried && choice.a.ok);
        assert_eq!(choice.trial, Some(Slot::B));
        // And grub-editenv reads what this module writes.
        std::fs::write(&f, SlotEnv::first_image().to_block().unwrap()).unwrap();
        let out = std::process::Command::new(editenv)
            .arg(&f)
            .arg("list")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ORDER=a b\na_OK=1\na_TRY=0\nb_OK=0\nb_TRY=0\nTRIAL=none\n"
        );
    }

    #[test]
    fn a_trial_gets_one_boot_then_the_committed_slot_boots() {
        let mut env = SlotEnv::first_image();
        assert_eq!(env.boot().0, Slot::A);
        // Writing slot B: it must not boot.
        env.disable(Slot::B);
        assert_eq!(env.boot().0, Slot::A);
        env.arm(Slot::B);
        let (slot, after) = env.boot();
        assert_eq!(slot, Slot::B);
        assert!(after.b.tried, "the trial is marked before it boots");
        // It did not confirm: the next boot is slot A, and A is not marked.
        let (slot, again) = after.boot();
        assert_eq!(slot, Slot::A);
        assert_eq!(again, after);
        // Had it confirmed: slot B boots from now on, unmarked.
        let mut committed = after;
        committed.commit(Slot::B);
        assert_eq!(committed.trial, None);
        let (slot, later) = committed.boot();
        assert_eq!(slot, Slot::B);
        assert_eq!(later, committed);
        // A rejected slot never boots again.
        let mut rejected = after;
        rejected.reject(Slot::B);
        assert_eq!(rejected.boot().0, Slot::A);
        assert!(!rejected.b.ok);
        // Round trip through grubenv.
        let block = committed.to_block().unwrap();
        assert_eq!(
            SlotEnv::from_env(&GrubEnv::parse(&block).unwrap()),
            committed
        );
        // Unreadable values take grub.cfg's defaults.
        let mut junk = GrubEnv::default();
        junk.set("ORDER", "x y");
        junk.set("a_OK", "yes");
        assert_eq!(SlotEnv::from_env(&junk), SlotEnv::first_image());
    }

    #[test]
    fn grub_cfg_reads_the_env_and_sources_the_slot() {
        let cfg = main_cfg("meet", 0);
        assert!(cfg.contains("set ORDER=\"a b\"\nset a_OK=1\nset a_TRY=0\nset b_OK=0\nset b_TRY=0\nset TRIAL=none\n"), "{cfg}");
        assert!(cfg.contains("load_env --file $prefix/grubenv ORDER a_OK a_TRY b_OK b_TRY TRIAL\n"));
        assert!(cfg.contains("save_env --file $prefix/grubenv a_TRY b_TRY\n"));
        assert!(
            cfg.ends_with("menuentry 'meet' {\n    source /appliance-$slot/grub.cfg\n}\n"),
            "{cfg}"
        );
        assert!(!cfg.contains("$(("), "GRUB has no arithmetic");
        let slot = slot_cfg(&crate::bootcfg::tests::sample(Slot::B));
        assert!(
            slot.starts_with(
                "echo 'Booting meet 2.0.0 (slot b)'\nlinux /appliance-b/vmlinuz 'roothash="
            ),
            "{slot}"
        );
        assert!(
            slot.ends_with("'console=ttyS0,115200'\ninitrd /appliance-b/initrd.img\n"),
            "{slot}"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
