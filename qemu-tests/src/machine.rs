//! Starting QEMU for an appliance disk image and driving it over QMP and the serial console.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::accel::{self, AccelChoice};
use crate::console::{Console, ConsoleMatch, WaitFailure};

pub use appliance_spec::Arch;

/// The QEMU system emulator binary for a guest architecture.
pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// The Debian package that ships [`qemu_binary`].
pub fn qemu_package(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86",
        Arch::Arm64 => "qemu-system-arm",
    }
}

/// Boot firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    Uefi,
    Bios,
}

/// UEFI firmware files for an architecture and the Debian package shipping them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFirmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
    pub package: &'static str,
    /// Size QEMU requires for each pflash image, if it requires one (aarch64 `virt`: 64 MiB).
    pub pflash_size: Option<u64>,
}

impl UefiFirmware {
    /// The firmware a machine of `arch` starts with. For x86_64, OVMF's 2 MiB build where the
    /// host has it (Debian 12's ovmf): under TCG it reaches the kernel about a second sooner
    /// than the 4 MiB build (docs/benchmarks.md), which newer releases ship alone.
    pub fn for_arch(arch: Arch) -> UefiFirmware {
        match arch {
            Arch::X86_64 => Self::first_installed(vec![
                Self::ovmf("OVMF_CODE.fd", "OVMF_VARS.fd"),
                Self::ovmf("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
            ]),
            Arch::Arm64 => UefiFirmware {
                code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
                vars_template: "/usr/share/AAVMF/AAVMF_VARS.fd".into(),
                package: "qemu-efi-aarch64",
                pflash_size: Some(64 << 20),
            },
        }
    }

    fn ovmf(code: &str, vars: &str) -> UefiFirmware {
        UefiFirmware {
            code: Path::new("/usr/share/OVMF").join(code),
            vars_template: Path::new("/usr/share/OVMF").join(vars),
            package: "ovmf",
            pflash_size: None,
        }
    }

    /// The first of `choices` whose two files are present; the last if none is, so that the
    /// error names what the current package ships.
    fn first_installed(mut choices: Vec<UefiFirmware>) -> UefiFirmware {
        let at = choices
            .iter()
            .position(|f| f.code.is_file() && f.vars_template.is_file())
            .unwrap_or(choices.len() - 1);
        choices.swap_remove(at)
    }
}

/// How to run one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    pub arch: Arch,
    pub firmware: Firmware,
    pub disk: PathBuf,
    /// "raw" or "qcow2".
    pub disk_format: String,
    /// Discard guest writes (`snapshot=on`), leaving the image file untouched.
    pub snapshot: bool,
    pub memory_mib: u32,
    pub cpus: u32,
    /// (host port on 127.0.0.1, guest port), TCP.
    pub port_forwards: Vec<(u16, u16)>,
    /// More disks, attached after [`MachineConfig::disk`] in this order (vdb, vdc, ...).
    pub extra_disks: Vec<ExtraDisk>,
    /// Holds the sockets, the UEFI variable store (unless [`MachineConfig::uefi_vars`] names
    /// one), console.log and qemu-stderr.log.
    pub workdir: PathBuf,
    /// UEFI only: the machine's own variable store, kept from one start to the next as a real
    /// machine keeps its NVRAM (made from the firmware's template when the file is missing).
    /// `None`: a fresh store in `workdir` at every start, so nothing an earlier run wrote
    /// (boot entries, boot order) influences this one.
    pub uefi_vars: Option<PathBuf>,
    /// BIOS only: tell SeaBIOS to mirror its screen output (and anything else the boot
    /// loader prints through the BIOS video services, e.g. GRUB's menu) to the serial port.
    /// Without it SeaBIOS prints nothing on serial, since `-display none` has no screen.
    pub bios_serial_mirror: bool,
    /// A stand-in for a cloud's metadata service: each guest connection to 169.254.169.254:80
    /// runs this program with the connection on its standard input and output. The user
    /// network then spans 169.254.169.0/24, since QEMU forwards only addresses inside it.
    pub metadata_service: Option<PathBuf>,
    /// The system manufacturer the firmware reports (SMBIOS type 1, DMI `sys_vendor`), e.g.
    /// "Hetzner"; QEMU's own ("QEMU") when `None`.
    pub system_vendor: Option<String>,
}

/// A disk attached besides the boot disk, e.g. a second disk carrying the same image. Guest
/// writes reach the file (no snapshot), so a test can tell whether the guest touched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDisk {
    pub path: PathBuf,
    /// "raw" or "qcow2".
    pub format: String,
}

impl MachineConfig {
    /// A config with the defaults: raw disk, snapshot on, 1024 MiB, 2 CPUs, no forwards.
    pub fn new(
        arch: Arch,
        firmware: Firmware,
        disk: impl Into<PathBuf>,
        workdir: impl Into<PathBuf>,
    ) -> MachineConfig {
        MachineConfig {
            arch,
            firmware,
            disk: disk.into(),
            disk_format: "raw".to_string(),
            snapshot: true,
            memory_mib: 1024,
            cpus: 2,
            port_forwards: Vec::new(),
            extra_disks: Vec::new(),
            workdir: workdir.into(),
            uefi_vars: None,
            bios_serial_mirror: true,
            metadata_service: None,
            system_vendor: None,
        }
    }
}

/// `value` as one value of a QEMU `key=value,...` option: a comma is written twice.
fn qemu_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// Finds a TCP port on 127.0.0.1 that is free right now (the OS picks it).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// How many console lines an error message carries.
const ERROR_CONTEXT_LINES: usize = 40;
/// QEMU creates its sockets within milliseconds; this only guards against a wedged start.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
const QMP_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// sun_path is 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A running QEMU guest. Dropping it kills QEMU, so a failing test never leaks a process.
pub struct Machine {
    /// When QEMU was spawned, so callers can measure boot time.
    pub started: Instant,
    accel: AccelChoice,
    workdir: PathBuf,
    command_line: Vec<String>,
    child: Mutex<Child>,
    qmp: Mutex<Option<Qmp>>,
    console: Console,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("pid", &self.pid())
            .field("accel", &self.accel)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Looks `name` up in PATH, the way the shell would.
fn require_file(path: &Path, package: &str) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        bail!(
            "firmware file {} is missing: install it with `apt-get install {package}`",
            path.display()
        )
    }
}

/// Copies `src` to `dst` and zero-pads it to `size`, as QEMU's `virt` pflash requires.
fn copy_padded(src: &Path, dst: &Path, size: Option<u64>) -> Result<()> {
    fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    if let Some(size) = size {
        let f = OpenOptions::new().write(true).open(dst)?;
        if f.metadata()?.len() < size {
            f.set_len(size)?;
        }
    }
    Ok(())
}

fn socket_path(workdir: &Path, name: &str) -> Result<PathBuf> {
    let p = workdir.join(name);
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter workdir",
            p.display()
        );
    }
    // A stale socket from an earlier run would make QEMU fail to bind.
    let _ = fs::remove_file(&p);
    Ok(p)
}

/// Builds the QEMU argument list (without the binary). Also prepares firmware copies in the
/// workdir. Separate from `start` so it can be inspected.
pub fn qemu_args(
    cfg: &MachineConfig,
    accel: &AccelChoice,
    qmp_sock: &Path,
    serial_sock: &Path,
) -> Result<Vec<String>> {
    let machine = match cfg.arch {
        Arch::X86_64 => "q35",
        Arch::Arm64 => "virt",
    };
    let mut a: Vec<String> = vec!["-machine".into(), machine.into()];
    a.extend(accel.qemu_args());
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let mem = cfg.memory_mib.to_string();
    let cpus = cfg.cpus.to_string();
    // -S: start paused so no console output is lost before the harness has connected.
    push(&[
        "-m",
        &mem,
        "-smp",
        &cpus,
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-S",
    ]);

    match (cfg.arch, cfg.firmware) {
        (Arch::Arm64, Firmware::Bios) => {
            bail!("aarch64 has no legacy BIOS boot; use Firmware::Uefi for aarch64 guests")
        }
        (arch, Firmware::Uefi) => {
            let fw = UefiFirmware::for_arch(arch);
            require_file(&fw.code, fw.package)?;
            require_file(&fw.vars_template, fw.package)?;
            let code = match fw.pflash_size {
                Some(size) if fs::metadata(&fw.code)?.len() < size => {
                    let padded = cfg.workdir.join("uefi-code.fd");
                    copy_padded(&fw.code, &padded, Some(size))?;
                    padded
                }
                _ => fw.code.clone(),
            };
            let vars = match &cfg.uefi_vars {
                Some(kept) => {
                    if !kept.exists() {
                        copy_padded(&fw.vars_template, kept, fw.pflash_size)?;
                    }
                    kept.clone()
                }
                None => {
                    let fresh = cfg.workdir.join("uefi-vars.fd");
                    copy_padded(&fw.vars_template, &fresh, fw.pflash_size)?;
                    fresh
                }
            };
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    code.display()
                ),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        (Arch::X86_64, Firmware::Bios) => {
            if cfg.bios_serial_mirror {
                // SeaBIOS reads the serial port for its screen mirror as a little-endian
                // integer from fw_cfg; 0x3f8 is COM1.
                let port_file = cfg.workdir.join("sercon-port");
                fs::write(&port_file, 0x3f8u16.to_le_bytes())?;
                push(&[
                    "-fw_cfg",
                    &format!("name=etc/sercon-port,file={}", port_file.display()),
                ]);
            }
        }
    }

    let drives = std::iter::once((&cfg.disk, &cfg.disk_format, cfg.snapshot))
        .chain(cfg.extra_disks.iter().map(|d| (&d.path, &d.format, false)));
    for (disk, format, snapshot) in drives {
        if format != "raw" && format != "qcow2" {
            bail!("disk format {format:?} is not supported (use raw or qcow2)");
        }
        if !disk.is_file() {
            bail!("disk image {} does not exist", disk.display());
        }
        push(&[
            "-drive",
            &format!(
                "file={},format={format},if=virtio,snapshot={}",
                disk.display(),
                if snapshot { "on" } else { "off" }
            ),
        ]);
    }

    let mut netdev = "user,id=n0".to_string();
    for (host, guest) in &cfg.port_forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    if let Some(program) = &cfg.metadata_service {
        netdev.push_str(&format!(
            ",net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-cmd:{}",
            qemu_option_value(&program.display().to_string())
        ));
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
    if let Some(vendor) = &cfg.system_vendor {
        push(&[
            "-smbios",
            &format!("type=1,manufacturer={}", qemu_option_value(vendor)),
        ]);
    }

    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp_sock.display()),
        "-chardev",
        &format!(
            "socket,id=ser0,path={},server=on,wait=off",
            serial_sock.display()
        ),
        "-serial",
        "chardev:ser0",
    ]);
    Ok(a)
}

impl Machine {
    /// Spawns QEMU (paused), connects QMP and the serial console, then resumes the guest.
    pub fn start(cfg: &MachineConfig) -> Result<Machine> {
        let binary = qemu_binary(cfg.arch);
        let qemu = crate::host::find_program(binary).ok_or_else(|| {
            anyhow!(
                "{binary} not found in PATH: install it with \
                 `apt-get install -t bookworm-backports {}`",
                qemu_package(cfg.arch)
            )
        })?;
        fs::create_dir_all(&cfg.workdir)
            .with_context(|| format!("creating workdir {}", cfg.workdir.display()))?;
        let accel = accel::select(cfg.arch)?;
        let qmp_sock = socket_path(&cfg.workdir, "qmp.sock")?;
        let serial_sock = socket_path(&cfg.workdir, "serial.sock")?;
        let args = qemu_args(cfg, &accel, &qmp_sock, &serial_sock)?;

        let stderr_path = cfg.workdir.join("qemu-stderr.log");
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let console_log_path = cfg.workdir.join("console.log");
        let console_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console_log_path)
            .with_context(|| format!("opening {}", console_log_path.display()))?;

        let mut command_line = vec![qemu.display().to_string()];
        command_line.extend(args.iter().cloned());
        // Recorded so a human can rerun the exact guest by hand.
        fs::write(
            cfg.workdir.join("qemu-command.txt"),
            command_line.join(" ") + "\n",
        )?;

        let started = Instant::now();
        let mut child = Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", qemu.display()))?;

        let connected = (|| -> Result<(Qmp, Console)> {
            let qmp_stream = connect_when_ready(&qmp_sock, &mut child, &stderr_path)?;
            let mut qmp = Qmp::handshake(qmp_stream)?;
            let serial = connect_when_ready(&serial_sock, &mut child, &stderr_path)?;
            let console = Console::start(serial, console_log)?;
            qmp.execute("cont")?;
            Ok((qmp, console))
        })();
        let (qmp, console) = match connected {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                // One flat message, so `{}` formatting shows the cause as well.
                return Err(anyhow!(
                    "starting QEMU failed: {e:#}\naccelerator: {}\n--- QEMU stderr ---\n{}",
                    accel.reason,
                    read_tail(&stderr_path)
                ));
            }
        };

        Ok(Machine {
            started,
            accel,
            workdir: cfg.workdir.clone(),
            command_line,
            child: Mutex::new(child),
            qmp: Mutex::new(Some(qmp)),
            console,
        })
    }

    /// Which accelerator is in use and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    /// The full QEMU command line (binary first).
    pub fn command_line(&self) -> &[String] {
        &self.command_line
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Path of the human-readable copy of the serial console.
    pub fn console_log_path(&self) -> PathBuf {
        self.workdir.join("console.log")
    }

    pub fn pid(&self) -> u32 {
        lock(&self.child).id()
    }

    /// Waits for the first console line containing `needle` since the previous wait.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[needle], timeout).map(|m| m.line)
    }

    /// Waits for the first console line containing any of `needles` since the previous wait.
    pub fn wait_for_any(&self, needles: &[&str], timeout: Duration) -> Result<ConsoleMatch> {
        self.describe_wait(
            needles,
            timeout,
            self.console.wait_for_any(needles, timeout),
        )
    }

    /// Like [`Machine::wait_for_any`], but matches only complete lines (never one still
    /// arriving), for lines that are parsed whole.
    pub fn wait_for_complete_line(
        &self,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<ConsoleMatch> {
        let r = self.console.wait_for_complete_line(needles, timeout);
        self.describe_wait(needles, timeout, r)
    }

    fn describe_wait(
        &self,
        needles: &[&str],
        timeout: Duration,
        result: std::result::Result<ConsoleMatch, WaitFailure>,
    ) -> Result<ConsoleMatch> {
        match result {
            Ok(m) => Ok(m),
            Err(WaitFailure::Timeout) => Err(anyhow!(
                "timed out after {:.1}s waiting for {needles:?} on the serial console\n{}",
                timeout.as_secs_f64(),
                self.diagnostics()
            )),
            Err(WaitFailure::Closed) => {
                let status = self.wait_for_exit_quietly(Duration::from_secs(5));
                Err(anyhow!(
                    "QEMU closed the serial console ({}) while waiting for {needles:?}\n{}",
                    status.map_or("still running".to_string(), |s| s.to_string()),
                    self.diagnostics()
                ))
            }
        }
    }

    /// Types `text` on the serial console.
    pub fn send(&self, text: &str) -> Result<()> {
        self.console
            .send(text)
            .context("writing to the serial console")
    }

    /// Everything the console has printed so far.
    pub fn console_text(&self) -> String {
        self.console.text()
    }

    /// The last `n` console lines (including an unterminated last line).
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        self.console.last_lines(n)
    }

    /// QEMU's stderr so far (its tail, if long).
    pub fn qemu_stderr(&self) -> String {
        read_tail(&self.workdir.join("qemu-stderr.log"))
    }

    /// Last console lines and QEMU's stderr, for error messages.
    pub fn diagnostics(&self) -> String {
        let lines = self.last_lines(ERROR_CONTEXT_LINES);
        format!(
            "accelerator: {}\n--- last {} console lines ---\n{}\n--- QEMU stderr ---\n{}",
            self.accel.reason,
            lines.len(),
            lines.join("\n"),
            self.qemu_stderr()
        )
    }

    /// Runs a QMP command without arguments and returns the raw reply line.
    pub fn qmp(&self, command: &str) -> Result<String> {
        let mut guard = lock(&self.qmp);
        let qmp = guard
            .as_mut()
            .ok_or_else(|| anyhow!("the QMP connection is closed"))?;
        qmp.execute(command)
    }

    fn wait_for_exit_quietly(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = lock(&self.child).try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit on its own (e.g. guest poweroff with `-no-reboot`).
    pub fn wait_for_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        self.wait_for_exit_quietly(timeout).ok_or_else(|| {
            anyhow!(
                "QEMU did not exit within {:.1}s\n{}",
                timeout.as_secs_f64(),
                self.diagnostics()
            )
        })
    }

    /// Stops the guest at once with QMP `quit`, killing QEMU if that does not work.
    pub fn power_off(mut self) -> Result<ExitStatus> {
        if let Some(status) = lock(&self.child).try_wait()? {
            return Ok(status);
        }
        // QEMU may close the socket before replying to quit, so the reply is not required.
        let _ = self.qmp("quit");
        if let Some(status) = self.wait_for_exit_quietly(Duration::from_secs(10)) {
            self.console.join_reader();
            return Ok(status);
        }
        let mut child = lock(&self.child);
        child.kill().context("killing QEMU after QMP quit failed")?;
        let status = child.wait()?;
        drop(child);
        self.console.join_reader();
        Ok(status)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // QEMU is gone, so its socket is closed and the reader thread ends.
        self.console.join_reader();
    }
}

/// Connects to a QEMU server socket, retrying until QEMU has created it.
fn connect_when_ready(path: &Path, child: &mut Child, stderr_path: &Path) -> Result<UnixStream> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if let Ok(s) = UnixStream::connect(path) {
            return Ok(s);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "QEMU exited ({status}) before creating {}:\n{}",
                path.display(),
                read_tail(stderr_path)
            );
        }
        if Instant::now() >= deadline {
            bail!("QEMU did not create {} in time", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The end of a text file, bounded so error messages stay readable.
fn read_tail(path: &Path) -> String {
    const MAX: usize = 8192;
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(MAX);
            String::from_utf8_lossy(&bytes[start..])
                .trim_end()
                .to_string()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A minimal QMP client: enough for capabilities negotiation, `cont` and `quit`.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn handshake(stream: UnixStream) -> Result<Qmp> {
        stream.set_read_timeout(Some(QMP_REPLY_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_line()?;
        if !greeting.contains("\"QMP\"") {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading from the QMP socket")?;
        if n == 0 {
            bail!("QMP socket closed");
        }
        Ok(line)
    }

    /// Sends `{"execute": command}` and returns the reply, skipping asynchronous events.
    fn execute(&mut self, command: &str) -> Result<String> {
        writeln!(self.writer, "{{\"execute\": \"{command}\"}}")
            .context("writing to the QMP socket")?;
        loop {
            let line = self.read_line()?;
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                bail!("QMP {command} failed: {}", line.trim());
            }
            // Anything else is an {"event": ...}; keep reading.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;

    fn tcg(guest: Arch) -> AccelChoice {
        AccelChoice {
            accel: Accel::Tcg,
            guest,
            reason: "test".into(),
        }
    }

    #[test]
    fn bios_on_aarch64_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        File::create(&disk).unwrap();
        let cfg = MachineConfig::new(Arch::Arm64, Firmware::Bios, &disk, dir.path());
        let e = qemu_args(&cfg, &tcg(Arch::Arm64), Path::new("q"), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("aarch64 has no legacy BIOS"), "{e}");
    }

    #[test]
    fn missing_disk_and_bad_format_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = MachineConfig::new(
            Arch::X86_64,
            Firmware::Bios,
            dir.path().join("nope.img"),
            dir.path(),
        );
        let e = qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        cfg.disk_format = "vmdk".into();
        let e = qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmdk"), "{e}");
    }

    #[test]
    fn missing_firmware_names_the_package() {
        let e = require_file(Path::new("/nonexistent/OVMF_CODE_4M.fd"), "ovmf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install ovmf"), "{e}");
    }

    #[test]
    fn the_first_firmware_with_both_files_is_taken_and_the_last_named_when_none_is() {
        let dir = tempfile::tempdir().unwrap();
        let fw = |name: &str| UefiFirmware {
            code: dir.path().join(format!("{name}_CODE.fd")),
            vars_template: dir.path().join(format!("{name}_VARS.fd")),
            package: "ovmf",
            pflash_size: None,
        };
        let choices = || vec![fw("small"), fw("large")];
        assert_eq!(UefiFirmware::first_installed(choices()), fw("large"));
        for f in ["large_CODE.fd", "large_VARS.fd", "small_CODE.fd"] {
            File::create(dir.path().join(f)).unwrap();
        }
        // The small build's variable store is missing: it is not taken.
        assert_eq!(UefiFirmware::first_installed(choices()), fw("large"));
        File::create(dir.path().join("small_VARS.fd")).unwrap();
        assert_eq!(UefiFirmware::first_installed(choices()), fw("small"));
        // This host's choice is one whose files exist.
        let host = UefiFirmware::for_arch(Arch::X86_64);
        assert!(
            host.code.is_file() && host.vars_template.is_file(),
            "{host:?}"
        );
    }

    #[test]
    fn bios_x86_args() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        File::create(&disk).unwrap();
        let mut cfg = MachineConfig::new(Arch::X86_64, Firmware::Bios, &disk, dir.path());
        cfg.port_forwards = vec![(18080, 8080), (18443, 443)];
        let a = qemu_args(
            &cfg,
            &tcg(Arch::X86_64),
            Path::new("/w/q"),
            Path::new("/w/s"),
        )
        .unwrap()
        .join(" ");
        assert!(a.starts_with("-machine q35 -accel tcg -cpu max -m 1024 -smp 2 -nodefaults"));
        assert!(!a.contains("pflash"), "{a}");
        assert!(a.contains(&format!(
            "file={},format=raw,if=virtio,snapshot=on",
            disk.display()
        )));
        assert!(a.contains(
            "user,id=n0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:127.0.0.1:18443-:443"
        ));
        assert!(a.contains("-serial chardev:ser0"));
        assert!(a.contains("socket,id=ser0,path=/w/s,server=on,wait=off"));
        assert_eq!(
            fs::read(dir.path().join("sercon-port")).unwrap(),
            [0xf8, 0x03]
        );
    }

    #[test]
    fn a_metadata_stand_in_and_a_vendor_reach_qemu_with_commas_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        File::create(&disk).unwrap();
        let mut cfg = MachineConfig::new(Arch::X86_64, Firmware::Uefi, &disk, dir.path());
        cfg.port_forwards = vec![(2222, 22)];
        cfg.metadata_service = Some(PathBuf::from("/w/meta,data"));
        cfg.system_vendor = Some("Hetzner, Inc".into());
        let args = qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s")).unwrap();
        let after = |flag: &str| {
            args.windows(2)
                .find(|w| w[0] == flag)
                .map(|w| w[1].clone())
                .unwrap_or_default()
        };
        assert_eq!(
            after("-netdev"),
            "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,net=169.254.169.0/24,\
             guestfwd=tcp:169.254.169.254:80-cmd:/w/meta,,data"
        );
        assert_eq!(after("-smbios"), "type=1,manufacturer=Hetzner,, Inc");
        cfg.metadata_service = None;
        cfg.system_vendor = None;
        let args = qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s")).unwrap();
        assert!(!args
            .iter()
            .any(|a| a == "-smbios" || a.contains("guestfwd")));
    }

    #[test]
    fn a_kept_uefi_variable_store_survives_the_next_start_and_a_fresh_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        File::create(&disk).unwrap();
        let template = fs::read(UefiFirmware::for_arch(Arch::X86_64).vars_template).unwrap();
        let pflash_of = |args: &[String]| {
            args.iter()
                .find(|a| a.starts_with("if=pflash,format=raw,unit=1,file="))
                .map(|a| PathBuf::from(a.trim_start_matches("if=pflash,format=raw,unit=1,file=")))
                .unwrap()
        };
        let mut cfg = MachineConfig::new(Arch::X86_64, Firmware::Uefi, &disk, dir.path());
        let kept = dir.path().join("machine-vars.fd");
        cfg.uefi_vars = Some(kept.clone());
        let start = || qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s")).unwrap();

        // First start: made from the template. What the firmware writes stays for the next.
        assert_eq!(pflash_of(&start()), kept);
        assert_eq!(fs::read(&kept).unwrap(), template);
        fs::write(&kept, b"written by the firmware").unwrap();
        assert_eq!(pflash_of(&start()), kept);
        assert_eq!(fs::read(&kept).unwrap(), b"written by the firmware");

        // Without a kept store every start gets the template again.
        cfg.uefi_vars = None;
        let fresh = pflash_of(
            &qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s")).unwrap(),
        );
        assert_eq!(fresh, dir.path().join("uefi-vars.fd"));
        fs::write(&fresh, b"written by the firmware").unwrap();
        qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s")).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), template);
    }

    #[test]
    fn extra_disks_follow_the_boot_disk_and_keep_their_writes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.qcow2");
        let second = dir.path().join("second.raw");
        File::create(&disk).unwrap();
        File::create(&second).unwrap();
        let mut cfg = MachineConfig::new(Arch::X86_64, Firmware::Bios, &disk, dir.path());
        cfg.disk_format = "qcow2".into();
        cfg.extra_disks = vec![ExtraDisk {
            path: second.clone(),
            format: "raw".into(),
        }];
        let args = qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s")).unwrap();
        let drives: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-drive")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            drives,
            [
                format!("file={},format=qcow2,if=virtio,snapshot=on", disk.display()),
                format!(
                    "file={},format=raw,if=virtio,snapshot=off",
                    second.display()
                ),
            ]
        );
        cfg.extra_disks[0].path = dir.path().join("missing.raw");
        let e = qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.raw does not exist"), "{e}");
        cfg.extra_disks[0] = ExtraDisk {
            path: second,
            format: "vdi".into(),
        };
        let e = qemu_args(&cfg, &tcg(Arch::X86_64), Path::new("q"), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"vdi\""), "{e}");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
