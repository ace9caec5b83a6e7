//! Choosing between KVM and TCG by what actually works, not by whether `/dev/kvm` exists.
//!
//! On this project's machines `/dev/kvm` is provided by `kvm_pvm`, a nested "PVM" hypervisor
//! that cannot run stock Debian kernels or OVMF (QEMU aborts with `-cpu host`, or the guest
//! hangs). So KVM is used only when every functional precondition holds.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::{bail, Result};

use crate::machine::Arch;

/// Environment variable that forces the accelerator (`kvm` or `tcg`).
pub const ACCEL_ENV: &str = "APPLIANCE_QEMU_ACCEL";

/// The accelerator QEMU will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Everything the decision depends on, gathered once so that [`decide`] is a pure function.
#[derive(Debug, Clone, Default)]
pub struct HostProbe {
    /// Architecture of the host; `None` when it is neither x86_64 nor aarch64.
    pub host_arch: Option<Arch>,
    /// Contents of /proc/cpuinfo (only the `flags` lines matter).
    pub cpuinfo: String,
    /// Whether /sys/module/kvm_pvm exists.
    pub kvm_pvm_loaded: bool,
    /// Whether /dev/kvm could be opened read-write.
    pub dev_kvm_rw: bool,
    /// Value of `APPLIANCE_QEMU_ACCEL`, if set and non-empty.
    pub env_override: Option<String>,
}

impl HostProbe {
    /// Reads the real host state.
    pub fn from_host() -> HostProbe {
        let host_arch = Arch::host();
        HostProbe {
            host_arch,
            // An unreadable cpuinfo simply means "no vmx/svm seen", which selects TCG.
            cpuinfo: std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            kvm_pvm_loaded: Path::new("/sys/module/kvm_pvm").exists(),
            dev_kvm_rw: OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            env_override: std::env::var(ACCEL_ENV)
                .ok()
                .filter(|v| !v.trim().is_empty()),
        }
    }
}

/// The decision plus why it was made, for logs and test reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub guest: Arch,
    pub reason: String,
}

impl AccelChoice {
    /// QEMU arguments selecting the accelerator and a CPU model that suits it.
    pub fn qemu_args(&self) -> Vec<String> {
        let args: &[&str] = match (self.accel, self.guest) {
            (Accel::Kvm, _) => &["-accel", "kvm", "-cpu", "host"],
            (Accel::Tcg, Arch::X86_64) => &["-accel", "tcg", "-cpu", "max"],
            // pauth-impdef makes TCG's pointer-authentication emulation much cheaper.
            (Accel::Tcg, Arch::Arm64) => &["-accel", "tcg", "-cpu", "max,pauth-impdef=on"],
        };
        args.iter().map(|s| s.to_string()).collect()
    }
}

/// True if a `flags` (x86) line of cpuinfo lists `vmx` or `svm` as a whole word.
pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Decides the accelerator for a guest of architecture `guest` on the probed host.
pub fn decide(probe: &HostProbe, guest: Arch) -> Result<AccelChoice> {
    let choice = |accel, reason: String| AccelChoice {
        accel,
        guest,
        reason,
    };
    let same_arch = probe.host_arch == Some(guest);

    if let Some(value) = &probe.env_override {
        return match value.trim().to_ascii_lowercase().as_str() {
            "tcg" => Ok(choice(
                Accel::Tcg,
                format!("TCG: forced by {ACCEL_ENV}=tcg"),
            )),
            "kvm" if !same_arch => {
                bail!("{ACCEL_ENV}=kvm, but KVM cannot run a {guest} guest on this host; use tcg")
            }
            "kvm" => Ok(choice(
                Accel::Kvm,
                format!("KVM: forced by {ACCEL_ENV}=kvm"),
            )),
            other => bail!("{ACCEL_ENV}={other:?} is not understood; use kvm or tcg"),
        };
    }
    if !same_arch {
        let host = probe
            .host_arch
            .map_or_else(|| std::env::consts::ARCH.to_string(), |a| a.to_string());
        return Ok(choice(
            Accel::Tcg,
            format!("TCG: the guest is {guest} but the host is {host}"),
        ));
    }
    if probe.kvm_pvm_loaded {
        return Ok(choice(
            Accel::Tcg,
            "TCG: /dev/kvm is served by kvm_pvm, which cannot run stock kernels".to_string(),
        ));
    }
    if !probe.dev_kvm_rw {
        return Ok(choice(
            Accel::Tcg,
            "TCG: /dev/kvm is missing or cannot be opened read-write".to_string(),
        ));
    }
    // vmx/svm are x86 flags; on aarch64 an openable /dev/kvm is the functional test.
    if guest == Arch::X86_64 && !cpuinfo_has_hw_virt(&probe.cpuinfo) {
        return Ok(choice(
            Accel::Tcg,
            "TCG: the CPU flags have neither vmx nor svm, so KVM would be nested without \
             hardware virtualisation"
                .to_string(),
        ));
    }
    Ok(choice(
        Accel::Kvm,
        "KVM: /dev/kvm opens read-write and the CPU supports hardware virtualisation".to_string(),
    ))
}

/// Probes the host and decides for `guest`.
pub fn select(guest: Arch) -> Result<AccelChoice> {
    decide(&HostProbe::from_host(), guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n";
    const PVM: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor sse2 vmxfoo\n";

    fn good_x86() -> HostProbe {
        HostProbe {
            host_arch: Some(Arch::X86_64),
            cpuinfo: VMX.to_string(),
            kvm_pvm_loaded: false,
            dev_kvm_rw: true,
            env_override: None,
        }
    }

    #[test]
    fn kvm_when_everything_holds() {
        let c = decide(&good_x86(), Arch::X86_64).unwrap();
        assert_eq!(c.accel, Accel::Kvm);
        assert_eq!(c.qemu_args(), ["-accel", "kvm", "-cpu", "host"]);
    }

    #[test]
    fn svm_counts_too() {
        let p = HostProbe {
            cpuinfo: "flags : fpu svm\n".into(),
            ..good_x86()
        };
        assert_eq!(decide(&p, Arch::X86_64).unwrap().accel, Accel::Kvm);
    }

    #[test]
    fn this_machine_pvm_gives_tcg() {
        let p = HostProbe {
            cpuinfo: PVM.to_string(),
            kvm_pvm_loaded: true,
            ..good_x86()
        };
        let c = decide(&p, Arch::X86_64).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert_eq!(
            c.reason,
            "TCG: /dev/kvm is served by kvm_pvm, which cannot run stock kernels"
        );
        assert_eq!(c.qemu_args(), ["-accel", "tcg", "-cpu", "max"]);
    }

    #[test]
    fn no_vmx_gives_tcg_and_substrings_do_not_count() {
        let p = HostProbe {
            cpuinfo: PVM.to_string(),
            ..good_x86()
        };
        let c = decide(&p, Arch::X86_64).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("vmx"), "{}", c.reason);
    }

    #[test]
    fn unopenable_dev_kvm_gives_tcg() {
        let p = HostProbe {
            dev_kvm_rw: false,
            ..good_x86()
        };
        let c = decide(&p, Arch::X86_64).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("/dev/kvm"), "{}", c.reason);
    }

    #[test]
    fn foreign_guest_gives_tcg_with_pauth() {
        let c = decide(&good_x86(), Arch::Arm64).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert_eq!(
            c.qemu_args(),
            ["-accel", "tcg", "-cpu", "max,pauth-impdef=on"]
        );
    }

    #[test]
    fn aarch64_host_needs_no_vmx_flag() {
        let p = HostProbe {
            host_arch: Some(Arch::Arm64),
            cpuinfo: "Features : fp asimd\n".into(),
            ..good_x86()
        };
        assert_eq!(decide(&p, Arch::Arm64).unwrap().accel, Accel::Kvm);
    }

    #[test]
    fn env_override_wins() {
        let p = HostProbe {
            env_override: Some("tcg".into()),
            ..good_x86()
        };
        assert_eq!(decide(&p, Arch::X86_64).unwrap().accel, Accel::Tcg);

        let p = HostProbe {
            kvm_pvm_loaded: true,
            env_override: Some("KVM".into()),
            ..good_x86()
        };
        assert_eq!(decide(&p, Arch::X86_64).unwrap().accel, Accel::Kvm);
    }

    #[test]
    fn env_override_errors() {
        let p = HostProbe {
            env_override: Some("hvf".into()),
            ..good_x86()
        };
        assert!(decide(&p, Arch::X86_64).is_err());
        let p = HostProbe {
            env_override: Some("kvm".into()),
            ..good_x86()
        };
        assert!(decide(&p, Arch::Arm64).is_err());
    }
}
