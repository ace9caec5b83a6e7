//! A stand-in for a cloud's metadata service at 169.254.169.254, reached through QEMU's
//! `guestfwd` ([`appliance_qemu_tests::MachineConfig::metadata_service`]): every connection
//! runs a small script that records the request line and answers with SSH public keys, as
//! Hetzner's `/hetzner/v1/metadata/public-keys` does (a YAML list).

use std::path::{Path, PathBuf};

use anyhow::Result;

pub struct MetadataStandIn {
    /// The program QEMU runs for each guest connection.
    pub program: PathBuf,
    log: PathBuf,
}

impl MetadataStandIn {
    /// Writes the script into `dir`; it answers every request with `keys` as a YAML list.
    pub fn new(dir: &Path, keys: &[String]) -> Result<MetadataStandIn> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join("metadata-requests.log");
        let program = dir.join("metadata-service");
        let body: String = keys.iter().map(|k| format!("- {k}\n")).collect();
        // One line per connection, then the request line once it arrives: a connection that
        // sends nothing (a probe) is counted too.
        let script = format!(
            "#!/bin/bash\n\
             echo connection >> '{log}'\n\
             IFS= read -r line || exit 0\n\
             printf '%s\\n' \"${{line%$'\\r'}}\" >> '{log}'\n\
             while IFS= read -r h && [ -n \"${{h%$'\\r'}}\" ]; do :; done\n\
             body='{body}'\n\
             printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n%s' \"${{#body}}\" \"$body\"\n",
            log = log.display(),
        );
        appliance_qemu_tests::host::write_program(&program, &script)?;
        let _ = std::fs::remove_file(&log);
        Ok(MetadataStandIn { program, log })
    }

    /// What reached it so far: "connection" for each connection, and each request line.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn answers_a_request_with_the_keys_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl meta"
                .to_string();
        let s = MetadataStandIn::new(dir.path(), std::slice::from_ref(&key)).unwrap();
        assert!(s.requests().is_empty());
        let mut child = Command::new(&s.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /hetzner/v1/metadata/public-keys HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.ends_with(&format!("\r\n\r\n- {key}\n")), "{text}");
        let body_len = format!("- {key}\n").len();
        assert!(
            text.contains(&format!("Content-Length: {body_len}\r\n")),
            "{text}"
        );
        assert_eq!(
            s.requests(),
            [
                "connection",
                "GET /hetzner/v1/metadata/public-keys HTTP/1.0"
            ]
        );
        // A connection that sends nothing is recorded too.
        let probe = Command::new(&s.program)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(probe.stdout.is_empty());
        assert_eq!(s.requests().len(), 3);
    }
}
