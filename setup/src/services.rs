//! Making the running services take up a changed configuration. `apply`'s "services" step only
//! *starts* them (a no-op for running ones); after a settings change or a restore, the ones
//! already running must restart to read their new configuration files.

use crate::runner::Cmd;
use crate::steps::Ctx;
use anyhow::Result;

/// The meeting services, as appliance-meeting.target lists them, and whether each is installed.
fn meeting_units(ctx: &Ctx) -> Vec<&'static str> {
    let mut units = vec!["prosody.service", "coturn.service"];
    // Jitsi's own services exist only in images built with Jitsi's packages.
    if ctx.paths.jitsi_index().exists() {
        units.extend(["jicofo.service", "jitsi-videobridge2.service"]);
    }
    units
}

/// Restart the meeting services that run (stopped ones stay stopped: try-restart), then
/// reload nginx. Meetings in progress are interrupted: callers say so before.
pub fn restart_meeting_services(ctx: &mut Ctx) -> Result<()> {
    let mut args = vec!["try-restart"];
    args.extend(meeting_units(ctx));
    ctx.systemctl(&args)?;
    ctx.systemctl(&["reload-or-restart", "nginx.service"])
}

/// Waits until Prosody accepts connections on its HTTP port, at most `timeout`. systemd calls
/// prosody.service started as soon as the program runs (Type=simple), seconds before it
/// listens; until then nginx answers the meeting page's BOSH and WebSocket requests with 502.
/// Says so when the time runs out; the caller goes on either way.
pub fn wait_for_prosody(ctx: &mut Ctx, timeout: std::time::Duration) {
    let Some(addr) = ctx.paths.prosody_http() else {
        return;
    };
    let start = std::time::Instant::now();
    let step = std::time::Duration::from_millis(250);
    while std::net::TcpStream::connect_timeout(&addr, step).is_err() {
        if start.elapsed() >= timeout {
            ctx.say(&format!(
                "Prosody does not answer on {addr} yet (after {} s); meetings start once it does: `systemctl status prosody` says why not",
                timeout.as_secs()
            ));
            return;
        }
        std::thread::sleep(step);
    }
}

/// appliance-setup.service is not ordered after network-online.target: a machine already set
/// up needs no network to boot, and waiting for it would hold back the meeting services. The
/// one thing `appliance-admin boot` fetches (SSH keys from a cloud's metadata service) waits
/// here until systemd has reached it (or given up on it: systemd-networkd-wait-online has its
/// own time limit). Not `ctx.systemctl`, which at boot queues the job without waiting for it.
pub fn wait_for_network(ctx: &mut Ctx) {
    let started = ctx
        .runner
        .check(&Cmd::new("systemctl").args(["start", "network-online.target"]));
    if let Err(e) = started {
        ctx.say(&format!(
            "setup: the network is not up ({e:#}); trying the metadata service anyway"
        ));
    }
}

/// A new TLS pair is in place: nginx reloads it, coturn restarts to read it (Prosody's own
/// listeners are on loopback and read it at their next start).
pub fn certificate_changed(ctx: &mut Ctx) -> Result<()> {
    ctx.systemctl(&["reload-or-restart", "nginx.service"])?;
    ctx.systemctl(&["try-restart", "coturn.service"])
}

/// sshd reads its host keys when it starts: a reload makes new connections use the keys on
/// /data. Sessions already open stay open.
pub fn reload_ssh(ctx: &mut Ctx) -> Result<()> {
    ctx.systemctl(&["try-reload-or-restart", "ssh.service"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RecordingRunner;
    use crate::steps::tests::machine;

    #[test]
    fn jitsi_services_are_restarted_only_when_installed() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let mut runner = RecordingRunner::new();
        let mut out = Vec::new();
        let mut ctx = Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        };
        restart_meeting_services(&mut ctx).unwrap();
        std::fs::create_dir_all(paths.jitsi_index().parent().unwrap()).unwrap();
        std::fs::write(paths.jitsi_index(), "").unwrap();
        restart_meeting_services(&mut ctx).unwrap();
        assert_eq!(
            runner.lines(),
            vec![
                "systemctl try-restart prosody.service coturn.service",
                "systemctl reload-or-restart nginx.service",
                "systemctl try-restart prosody.service coturn.service jicofo.service jitsi-videobridge2.service",
                "systemctl reload-or-restart nginx.service",
            ]
        );
    }
}
