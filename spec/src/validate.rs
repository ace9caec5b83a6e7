//! Checks for every answer a person gives. Each error is a full sentence that says what is wrong
//! and what would be accepted, because the reader may not know what an FQDN or a key blob is.

use std::net::IpAddr;
use std::path::Path;

/// The longest prefix we put in front of the domain ("internal.auth."), so derived names stay
/// within the 253-character DNS limit.
const LONGEST_DERIVED_PREFIX: usize = "internal.auth.".len();

/// Validate a meeting domain and return it in lower case without a trailing dot.
pub fn domain(input: &str) -> Result<String, String> {
    let d = input.trim().to_ascii_lowercase();
    let d = d.strip_suffix('.').unwrap_or(&d).to_string();
    if d.is_empty() {
        return Err("Please enter the domain name people will use to reach the meetings, for example meet.example.org.".into());
    }
    if d.contains("://") || d.contains('/') {
        return Err(format!("\"{}\" is a web address; enter only the name, such as meet.example.org, without https:// or slashes.", shown(&d)));
    }
    if d.parse::<IpAddr>().is_ok() {
        return Err(format!("\"{d}\" is an IP address, but a domain name such as meet.example.org is needed (certificates and meeting links use the name)."));
    }
    fqdn(&d)?;
    if d.len() + LONGEST_DERIVED_PREFIX > 253 {
        return Err(format!("The domain name is {} characters long; it must be at most {} characters because the meeting service adds names such as internal.auth. in front of it.", d.len(), 253 - LONGEST_DERIVED_PREFIX));
    }
    Ok(d)
}

/// Host-name rules shared by the meeting domain and the e-mail domain.
fn fqdn(d: &str) -> Result<(), String> {
    if d.len() > 253 {
        return Err(format!(
            "The domain name is {} characters long; domain names can be at most 253 characters.",
            d.len()
        ));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("\"{}\" is not a full domain name: it needs at least one dot, for example meet.example.org.", shown(d)));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(format!("\"{}\" has two dots in a row or starts with a dot; each part between dots must have at least one character.", shown(d)));
        }
        if label.len() > 63 {
            return Err(format!("The part \"{}\" of the domain name is {} characters long; each part between dots can be at most 63 characters.", shown(label), label.len()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!("The domain name contains \"{}\"; only letters a-z, digits 0-9, hyphens and dots are allowed.", shown_char(c)));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("The part \"{label}\" of the domain name starts or ends with a hyphen, which domain names do not allow."));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("\"{}\" looks like an IP address; the last part of a domain name cannot be only digits.", shown(d)));
    }
    Ok(())
}

/// Validate a meeting host's user name (the XMPP account people log in with).
pub fn host_name(input: &str) -> Result<String, String> {
    let n = input.trim().to_ascii_lowercase();
    if n.is_empty() {
        return Err("Please enter a user name for the host, for example alice.".into());
    }
    if n.len() > 32 {
        return Err(format!(
            "The user name is {} characters long; it can be at most 32 characters.",
            n.len()
        ));
    }
    let first = n.chars().next().unwrap_or(' ');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("The user name must start with a letter or a digit.".into());
    }
    if let Some(c) = n
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("The user name contains \"{}\"; use only letters a-z, digits, dots, hyphens and underscores.", shown_char(c)));
    }
    Ok(n)
}

/// Passwords that pass the length and variety rules but are guessed first by attackers.
const COMMON_PASSWORDS: &[&str] = &[
    "password1234",
    "password123!",
    "passw0rd1234",
    "p@ssw0rd1234",
    "p@ssword1234",
    "qwerty123456",
    "qwertyuiop12",
    "qwertyuiop123",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "iloveyou1234",
    "welcome12345",
    "welcome123!!",
    "letmein12345",
    "changeme1234",
    "changeme123!",
    "administrator1",
    "admin1234567",
    "abc123456789",
    "abcdef123456",
    "correcthorsebatterystaple",
    "correct horse battery staple",
    "jitsimeet123",
    "jitsimeet1234",
    "meeting12345",
    "football1234",
    "monkey123456",
    "sunshine1234",
    "princess1234",
    "trustno1trustno1",
];

pub const MIN_PASSWORD_LEN: usize = 12;

/// Check a host password. `user` and `domain` are things the password must not equal.
pub fn password(pw: &str, user: &str, domain: &str) -> Result<(), String> {
    if pw.is_empty() {
        return Err("The password is empty; please type a password.".into());
    }
    // Prosody normalises passwords with SASLprep before hashing; printable ASCII is the set
    // that normalisation never changes, so what is stored always matches what is typed.
    // Messages never quote the password, a character of it or its length: they reach the
    // console and the journal.
    if pw.chars().any(|c| !(' '..='~').contains(&c)) {
        let what = if pw.chars().any(char::is_control) {
            "a control character (such as a tab)"
        } else {
            "a character that is not on an English keyboard"
        };
        return Err(format!("The password contains {what}; please use only letters a-z and A-Z, digits, spaces and punctuation found on an English keyboard."));
    }
    if pw.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!("The password is too short: it needs at least {MIN_PASSWORD_LEN} characters. A few unrelated words make a long password that is easy to remember."));
    }
    if pw.starts_with(' ') || pw.ends_with(' ') {
        return Err("The password starts or ends with a space, which is easy to lose when typing it later; please remove it.".into());
    }
    let classes = [
        pw.chars().any(|c| c.is_ascii_lowercase()),
        pw.chars().any(|c| c.is_ascii_uppercase()),
        pw.chars().any(|c| c.is_ascii_digit()),
        pw.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    if classes.iter().filter(|x| **x).count() < 2 {
        return Err("The password uses only one kind of character; mix in at least one other kind (capital letters, digits, spaces or punctuation).".into());
    }
    let mut distinct: Vec<char> = pw.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 5 {
        return Err("The password repeats the same few characters; please use at least 5 different characters.".into());
    }
    let lower = pw.to_ascii_lowercase();
    if !user.is_empty() && lower == user.to_ascii_lowercase() {
        return Err(
            "The password is the same as the user name; please choose something else.".into(),
        );
    }
    if !domain.is_empty() && lower == domain.to_ascii_lowercase() {
        return Err(
            "The password is the same as the domain name; please choose something else.".into(),
        );
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Err("This password is on the list of passwords attackers try first; please choose a less common one.".into());
    }
    Ok(())
}

/// Decode standard base64 (with optional padding); None on any invalid character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        out.push((acc >> 16) as u8);
        if chunk.len() > 2 {
            out.push((acc >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

/// Encode standard base64, with `=` padding or without (as OpenSSH prints fingerprints).
pub fn base64_encode(data: &[u8], pad: bool) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Reader of the SSH wire format (RFC 4251 strings: 4-byte big-endian length + bytes).
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        if self.0.len() < 4 {
            return None;
        }
        let n = u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) as usize;
        let rest = &self.0[4..];
        if rest.len() < n {
            return None;
        }
        let (s, tail) = rest.split_at(n);
        self.0 = tail;
        Some(s)
    }
}

const KEY_TYPES_HELP: &str = "ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa (2048 bits or more) or a security-key type (sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com)";

/// A checked SSH public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    /// The key type, e.g. `ssh-ed25519`.
    pub kind: String,
    /// The key data as written (base64).
    pub data: String,
    /// Size of the key in bits, as `ssh-keygen -l` counts them.
    pub bits: usize,
    /// The comment, only when it is printable ASCII (anything else is dropped: it would be
    /// shown on consoles and stored in authorized_keys).
    pub comment: Option<String>,
    blob: Vec<u8>,
}

impl SshKey {
    /// The authorized_keys line: type, data and the (clean) comment.
    pub fn line(&self) -> String {
        match &self.comment {
            Some(c) => format!("{} {} {c}", self.kind, self.data),
            None => format!("{} {}", self.kind, self.data),
        }
    }

    /// `SHA256:<base64 of the SHA-256 of the key data, no padding>`, as OpenSSH shows it.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        format!(
            "SHA256:{}",
            base64_encode(&Sha256::digest(&self.blob), false)
        )
    }

    /// One line like `ssh-keygen -l` prints: bits, fingerprint, comment, type.
    pub fn describe(&self) -> String {
        let kind = match self.kind.as_str() {
            "ssh-ed25519" => "ED25519",
            "sk-ssh-ed25519@openssh.com" => "ED25519-SK",
            "ssh-rsa" => "RSA",
            "sk-ecdsa-sha2-nistp256@openssh.com" => "ECDSA-SK",
            _ => "ECDSA",
        };
        let comment = self.comment.as_deref().unwrap_or("no comment");
        format!("{} {} {comment} ({kind})", self.bits, self.fingerprint())
    }
}

/// Validate one SSH public key line ("type base64 [comment]") and return it normalised.
pub fn ssh_public_key(line: &str) -> Result<String, String> {
    ssh_key(line).map(|k| k.line())
}

/// Parse and check one SSH public key line ("type base64 [comment]").
pub fn ssh_key(line: &str) -> Result<SshKey, String> {
    let line = line.trim();
    let mut parts = line.split_whitespace();
    let Some(kind) = parts.next() else {
        return Err("The SSH key is empty.".into());
    };
    let Some(b64) = parts.next() else {
        return Err(format!("\"{}\" is not a complete SSH public key; copy the whole line of your .pub file, for example ~/.ssh/id_ed25519.pub (it starts with the key type, then a long block of letters).", shown(line)));
    };
    let comment: Vec<&str> = parts.collect();
    match kind {
        "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521"
        | "ssh-rsa" | "sk-ssh-ed25519@openssh.com" | "sk-ecdsa-sha2-nistp256@openssh.com" => {}
        "ssh-dss" => {
            return Err("This is a DSA key, which is no longer considered safe; please create an ed25519 key with: ssh-keygen -t ed25519".into())
        }
        _ if kind.starts_with("-----BEGIN") => {
            return Err("This looks like a private key or a certificate. Never share a private key; paste the public key instead (the .pub file).".into())
        }
        _ => {
            return Err(format!("\"{}\" is not a supported SSH key type; use {KEY_TYPES_HELP}.", shown(kind)))
        }
    }
    let blob = base64_decode(b64).ok_or_else(|| {
        "The key's data is damaged (it is not valid base64); copy the whole line again without line breaks.".to_string()
    })?;
    let mut w = Wire(&blob);
    let bits;
    let damaged = || "The key's data is damaged or cut off; copy the whole line again.".to_string();
    let embedded = w.string().ok_or_else(damaged)?;
    if embedded != kind.as_bytes() {
        return Err(format!("The key says it is \"{kind}\" but its data holds a \"{}\" key; the line was probably edited or assembled from two keys.", shown(&String::from_utf8_lossy(embedded))));
    }
    match kind {
        "ssh-ed25519" | "sk-ssh-ed25519@openssh.com" => {
            let pk = w.string().ok_or_else(damaged)?;
            if pk.len() != 32 {
                return Err(damaged());
            }
            bits = 256;
            if kind.starts_with("sk-") {
                w.string().ok_or_else(damaged)?; // application, e.g. "ssh:"
            }
        }
        "ssh-rsa" => {
            let _e = w.string().ok_or_else(damaged)?;
            let n = w.string().ok_or_else(damaged)?;
            bits = mpint_bits(n);
            if bits < 2048 {
                return Err(format!("This RSA key has only {bits} bits; at least 2048 are needed. Please create a new key with: ssh-keygen -t ed25519"));
            }
        }
        _ => {
            // ecdsa-sha2-<curve> and sk-ecdsa-sha2-nistp256@openssh.com
            let curve_name = kind
                .trim_start_matches("sk-")
                .trim_start_matches("ecdsa-sha2-")
                .trim_end_matches("@openssh.com");
            let curve = w.string().ok_or_else(damaged)?;
            if curve != curve_name.as_bytes() {
                return Err(format!("The key says it uses the curve {curve_name} but its data names another curve; copy the key again."));
            }
            let point = w.string().ok_or_else(damaged)?;
            let field = match curve_name {
                "nistp256" => 32,
                "nistp384" => 48,
                _ => 66,
            };
            bits = match curve_name {
                "nistp256" => 256,
                "nistp384" => 384,
                _ => 521,
            };
            if point.len() != 1 + 2 * field || point[0] != 4 {
                return Err(damaged());
            }
            if kind.starts_with("sk-") {
                w.string().ok_or_else(damaged)?;
            }
        }
    }
    if !w.0.is_empty() {
        return Err("The key's data has extra bytes at the end; copy the whole line again.".into());
    }
    let comment = comment.join(" ");
    let printable = comment.chars().all(|c| (' '..='~').contains(&c));
    Ok(SshKey {
        kind: kind.to_string(),
        data: b64.to_string(),
        bits,
        comment: (!comment.is_empty() && printable).then_some(comment),
        blob,
    })
}

/// Number of significant bits of an SSH mpint (big-endian, may have a leading zero byte).
fn mpint_bits(n: &[u8]) -> usize {
    let mut i = 0;
    while i < n.len() && n[i] == 0 {
        i += 1;
    }
    if i == n.len() {
        return 0;
    }
    (n.len() - i - 1) * 8 + (8 - n[i].leading_zeros() as usize)
}

/// Input as a message may quote it: control and invisible formatting characters (escape
/// sequences that would rewrite the terminal, line breaks that would fake another message,
/// bidirectional overrides) are shown escaped, and long input is cut at 40 characters.
pub fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 40 {
            out.push_str("...");
            break;
        }
        out.push_str(&shown_char(c));
    }
    out
}

/// Like [`shown`], without cutting long text (for messages that must be read whole).
pub fn escaped(s: &str) -> String {
    s.chars().map(shown_char).collect()
}

/// One character for a message: itself when it is harmless, else its escaped form (`\u{1b}`).
pub fn shown_char(c: char) -> String {
    let invisible = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
    if c.is_control() || invisible {
        c.escape_unicode().to_string()
    } else {
        c.to_string()
    }
}

/// Validate the Let's Encrypt contact address.
pub fn email(input: &str) -> Result<String, String> {
    let e = input.trim();
    let help = "Please enter an e-mail address such as admin@example.org.";
    let Some((local, dom)) = e.rsplit_once('@') else {
        return Err(format!("\"{}\" has no @ sign. {help}", shown(e)));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(format!(
            "The part before the @ must have 1 to 64 characters. {help}"
        ));
    }
    if let Some(c) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(*c)))
    {
        return Err(format!(
            "The e-mail address contains \"{}\" before the @, which is not allowed. {help}",
            shown_char(c)
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(format!("The part before the @ cannot start or end with a dot or have two dots in a row. {help}"));
    }
    let dom = dom.to_ascii_lowercase();
    fqdn(&dom).map_err(|m| format!("The part after the @ is not a valid domain: {m}"))?;
    let out = format!("{local}@{dom}");
    if out.len() > 254 {
        return Err(format!(
            "The e-mail address is too long (at most 254 characters). {help}"
        ));
    }
    Ok(out)
}

/// Validate a time zone name such as Europe/Berlin against the zoneinfo directory.
pub fn timezone(input: &str, zoneinfo: &Path) -> Result<String, String> {
    let tz = input.trim();
    if tz.is_empty() {
        return Err("Please enter a time zone such as UTC or Europe/Berlin.".into());
    }
    if tz.starts_with('/')
        || tz.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        || !tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
    {
        return Err(format!("\"{}\" is not a time zone name; names look like UTC, Europe/Berlin or America/New_York.", shown(tz)));
    }
    if !zoneinfo.join(tz).is_file() {
        return Err(format!("There is no time zone called \"{tz}\"; names look like UTC, Europe/Berlin or America/New_York (capital letters matter)."));
    }
    Ok(tz.to_string())
}

/// Validate a time of day in 24-hour form and return it as HH:MM.
pub fn time_of_day(input: &str) -> Result<String, String> {
    let t = input.trim();
    let bad = || {
        format!(
            "\"{}\" is not a time; use the 24-hour form HH:MM, for example 23:30.",
            shown(t)
        )
    };
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    if h.is_empty()
        || h.len() > 2
        || m.len() != 2
        || !h.chars().chain(m.chars()).all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(format!(
            "{t} is not a time of day; hours go from 00 to 23 and minutes from 00 to 59."
        ));
    }
    Ok(format!("{h:02}:{m:02}"))
}

/// A window of the day, `HH:MM-HH:MM` (it may run past midnight, as in `22:00-04:00`);
/// returns it normalised.
pub fn time_window(input: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "\"{}\" is not a time window; write it as HH:MM-HH:MM, for example 02:00-05:00.",
            shown(input.trim())
        )
    };
    let (from, to) = input.trim().split_once('-').ok_or_else(bad)?;
    let from = time_of_day(from).map_err(|_| bad())?;
    let to = time_of_day(to).map_err(|_| bad())?;
    if from == to {
        return Err(format!(
            "{from}-{to} is an empty window; give two different times."
        ));
    }
    Ok(format!("{from}-{to}"))
}

pub const MAX_IDLE_MINUTES: u32 = 7 * 24 * 60;
pub const MIN_IDLE_MINUTES: u32 = 1;

/// Validate the idle power-off delay (0 = never).
pub fn idle_minutes(n: i64) -> Result<u32, String> {
    if n == 0 {
        return Ok(0);
    }
    if n < 0 {
        return Err("The number of minutes cannot be negative; enter 0 to never power off.".into());
    }
    if n < MIN_IDLE_MINUTES as i64 {
        return Err(format!("{n} minutes is too short: people need time to join. Enter 0 (never) or at least {MIN_IDLE_MINUTES} minutes."));
    }
    if n > MAX_IDLE_MINUTES as i64 {
        return Err(format!("{n} minutes is more than a week; enter at most {MAX_IDLE_MINUTES} minutes, or 0 to never power off."));
    }
    Ok(n as u32)
}

/// Parse the idle minutes typed in the wizard.
pub fn idle_minutes_text(input: &str) -> Result<u32, String> {
    let t = input.trim();
    let n: i64 = t
        .parse()
        .map_err(|_| format!("\"{}\" is not a number of minutes; enter a whole number such as 60, or 0 to never power off.", shown(t)))?;
    idle_minutes(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrAR/bS3lTV9w81gAeSQwVk7HCW8UHb7lUqp0e37MSe test@example";
    const RSA2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDMggigsM5rAZd5WeXfNEhbWv2fJA5ufKs2TONS9UhvTDM/cHwuqm54PQQLDmh51PdjI6yEeDTBN8hY3eyAOODO8zJibh2kYl+v7wlD1F0AlDGp1H2bHy1YMcdPGXSRwXlo4dR6mLLoh+oNII9+sueP/Iwzk5yEC9uEH09v06FrepWaciq1HPTeHjSkguNzjqrqDU9FwylWtQPWxsEbkmIJY4pzPScOmv+51HJ1X3hKsZmiS3xHR6W6OqaslhC/W7BbaCQ+O9m1ehSukeXQIK+ifJimMI6wKEhLohagsotRFa9zV7+GmapFzXAS7v+CCjPG4VtqGtdlKJkoCovnWYmN test@example";
    const RSA1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDWfElPyfEopIwi9a3aU/eFQyGuHIBEad8gZn/ZGXa3nHo1k3+VcP5RiEKdsvPhUf09sCQA3dMK0Ky+kzZtaaXWvpdbXnmckMxJAhe14kd7BHJbHNUeAVMi2mdNv9A7/1bMHqNuSy5wMhmMYMpmmWrIC5gj04yQ4z/zAqbPbCzKdQ== test@example";
    const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNtsvnW/7LOP0cJrLlk8KPmV8d18y87CZOhhoYqO2JbFM89bAbSF3LKTmO6QKdTBQvioKxj0c8VACpP1zDbbrWA= test@example";
    const P384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBDX6ZUS6VkvOf6zChjzLbWcO3eOW7uyJrZQNlA7xYiE1x+dauvoCKO7o09HKBmaOzqQmrYUuVaLualxf2ZJ1JYRfpUwAn6xlXMA64mdsTa/PyKhq1RnoRYA12SxOgLxhIQ== test@example";
    const P521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBACrU1QClPZGQyha/gZu4m7N912U3DwueglmNuQJp7SfcPPj/bOOO3fbxoU0crGFYsk5Y+XJbPPw0j6xT1aOtcSwgAFcdXkkcm+ty1gWvXiqT05UjyhXVk/LifGMOZPgUcJ7LmT10ZpPMDRb90UKqJf3dX02J54iCjyvMWdKoJO6fI2nXA== test@example";

    fn b64(data: &[u8]) -> String {
        base64_encode(data, true)
    }

    fn wire(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(&(p.len() as u32).to_be_bytes());
            v.extend_from_slice(p);
        }
        v
    }

    #[test]
    fn good_domains() {
        assert_eq!(domain("meet.example.org").unwrap(), "meet.example.org");
        assert_eq!(domain(" Meet.Example.ORG. ").unwrap(), "meet.example.org");
        assert_eq!(domain("meet.localhost").unwrap(), "meet.localhost");
        assert_eq!(domain("a-b.c1.de").unwrap(), "a-b.c1.de");
        assert_eq!(
            domain("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn bad_domains() {
        let cases = [
            ("", "Please enter"),
            ("localhost", "at least one dot"),
            ("192.168.1.10", "IP address"),
            ("::1", "IP address"),
            ("1.2.3", "only digits"),
            ("meet..example.org", "two dots"),
            (".example.org", "two dots"),
            ("-meet.example.org", "hyphen"),
            ("meet-.example.org", "hyphen"),
            ("meet_room.example.org", "\"_\""),
            ("meet example.org", "\" \""),
            ("bücher.example", "\"ü\""),
            ("https://meet.example.org", "without https://"),
            ("meet.example.org/room", "without https://"),
            ("meet.example.org:443", "\":\""),
        ];
        for (input, needle) in cases {
            let e = domain(input).unwrap_err();
            assert!(e.contains(needle), "{input:?}: {e}");
        }
        let long_label = format!("{}.org", "a".repeat(64));
        assert!(domain(&long_label).unwrap_err().contains("63"));
        let label = "a".repeat(60);
        let long = format!("{label}.{label}.{label}.{label}.{label}.org");
        assert!(long.len() > 253);
        assert!(domain(&long).unwrap_err().contains("253"));
        let almost = format!("{label}.{label}.{label}.{}.org", "a".repeat(60));
        assert!(
            almost.len() > 239 && almost.len() <= 253,
            "{}",
            almost.len()
        );
        assert!(
            domain(&almost).unwrap_err().contains("at most 239"),
            "{almost}"
        );
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("Alice").unwrap(), "alice");
        assert_eq!(host_name("bob.smith_2-x").unwrap(), "bob.smith_2-x");
        assert!(host_name("").unwrap_err().contains("Please enter"));
        assert!(host_name(".alice").unwrap_err().contains("start with"));
        assert!(host_name("al ice").unwrap_err().contains("\" \""));
        assert!(host_name("alice@meet").unwrap_err().contains("\"@\""));
        assert!(host_name(&"a".repeat(33))
            .unwrap_err()
            .contains("at most 32"));
        assert!(host_name(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn strong_passwords_pass() {
        password("Tulip-Harbor-42", "alice", "meet.example.org").unwrap();
        password("violet ocean lamp", "alice", "meet.example.org").unwrap();
    }

    #[test]
    fn weak_passwords_explained() {
        let cases = [
            ("", "empty"),
            ("Short-1", "too short"),
            ("abcdefghijklmnop", "one kind"),
            ("123456789012345", "one kind"),
            ("aaaaaaa1aaaaaa", "5 different"),
            ("Password1234", "attackers try first"),
            ("correct horse battery staple", "attackers try first"),
            (" Tulip-Harbor-42", "starts or ends with a space"),
            ("Tulip-Härbor-42", "not on an English keyboard"),
            ("Tulip\tHarbor-42", "control character"),
        ];
        for (pw, needle) in cases {
            let e = password(pw, "alice", "meet.example.org").unwrap_err();
            assert!(e.contains(needle), "{pw:?}: {e}");
            // Nothing about the password itself: not its length, not a character of it.
            assert!(!e.contains(&pw.chars().count().to_string()), "{pw:?}: {e}");
            assert!(!e.contains('ä') && !e.contains('\t'), "{pw:?}: {e}");
        }
        assert!(password("alice.smith1", "Alice.Smith1", "x.org")
            .unwrap_err()
            .contains("user name"));
        assert!(password("meet.example.org", "alice", "meet.example.org")
            .unwrap_err()
            .contains("domain name"));
    }

    #[test]
    fn real_keys_accepted() {
        for k in [ED25519, RSA2048, P256, P384, P521] {
            assert_eq!(ssh_public_key(&format!("  {k}  ")).unwrap(), k);
        }
        let no_comment = ED25519.rsplit_once(' ').unwrap().0;
        assert_eq!(ssh_public_key(no_comment).unwrap(), no_comment);
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        // Expected values printed by `ssh-keygen -lf` (OpenSSH 9.2) for the same lines.
        assert_eq!(
            ssh_key(ED25519).unwrap().describe(),
            "256 SHA256:SwoXeapOouC3yJjFIRyTQx6wVyhKVPnPbHY2MG2Cepo test@example (ED25519)"
        );
        assert_eq!(
            ssh_key(RSA2048).unwrap().describe(),
            "2048 SHA256:0AhIo60h0s52kk6gK1ZegQn6/74hQmB6QK4h8mZwrss test@example (RSA)"
        );
        assert_eq!(
            ssh_key(P521).unwrap().describe(),
            "521 SHA256:/o90d9IQ+TcglCQf30bog6QJBNRYz5KNNaVkBZ5X6kI test@example (ECDSA)"
        );
    }

    #[test]
    fn comments_with_control_characters_are_dropped() {
        let (kind_data, _) = ED25519.rsplit_once(' ').unwrap();
        for bad in ["evil\u{1b}[2Jcomment", "bell\u{7}", "caf\u{e9}"] {
            let k = ssh_key(&format!("{kind_data} {bad}")).unwrap();
            assert_eq!(k.comment, None, "{bad:?}");
            assert_eq!(k.line(), kind_data);
        }
        let k = ssh_key(&format!("{kind_data} alice@laptop  2024")).unwrap();
        assert_eq!(k.line(), format!("{kind_data} alice@laptop 2024"));
    }

    #[test]
    fn messages_escape_what_they_quote() {
        assert_eq!(shown("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\u{a}");
        assert_eq!(shown("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(shown(&"a".repeat(50)), format!("{}...", "a".repeat(40)));
        for e in [
            domain("evil\u{1b}]0;title\u{7}").unwrap_err(),
            host_name("al\u{1b}[2Jice").unwrap_err(),
            email("a\u{1b}b@example.org").unwrap_err(),
            ssh_public_key("\u{1b}[2J AAAA").unwrap_err(),
            time_of_day("\u{1b}[2J").unwrap_err(),
            idle_minutes_text("\u{9b}1m").unwrap_err(),
        ] {
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(e.contains("\\u{"), "{e:?}");
        }
    }

    #[test]
    fn security_key_types_accepted() {
        let sk = wire(&[b"sk-ssh-ed25519@openssh.com", &[7u8; 32], b"ssh:"]);
        ssh_public_key(&format!("sk-ssh-ed25519@openssh.com {} yubikey", b64(&sk))).unwrap();
        let mut point = vec![4u8];
        point.extend_from_slice(&[1u8; 64]);
        let sk = wire(&[
            b"sk-ecdsa-sha2-nistp256@openssh.com",
            b"nistp256",
            &point,
            b"ssh:",
        ]);
        ssh_public_key(&format!("sk-ecdsa-sha2-nistp256@openssh.com {}", b64(&sk))).unwrap();
        // Missing application string.
        let sk = wire(&[b"sk-ssh-ed25519@openssh.com", &[7u8; 32]]);
        assert!(
            ssh_public_key(&format!("sk-ssh-ed25519@openssh.com {}", b64(&sk)))
                .unwrap_err()
                .contains("damaged")
        );
    }

    #[test]
    fn bad_keys_explained() {
        assert!(ssh_public_key(RSA1024)
            .unwrap_err()
            .contains("only 1024 bits"));
        assert!(ssh_public_key("ssh-ed25519")
            .unwrap_err()
            .contains("not a complete"));
        assert!(ssh_public_key("ssh-dss AAAAB3NzaC1kc3M=")
            .unwrap_err()
            .contains("DSA"));
        assert!(ssh_public_key("-----BEGIN OPENSSH PRIVATE KEY----- abc")
            .unwrap_err()
            .contains("private key"));
        assert!(ssh_public_key("ssh-foo AAAA")
            .unwrap_err()
            .contains("not a supported"));
        assert!(ssh_public_key("ssh-ed25519 AAAA$$$")
            .unwrap_err()
            .contains("base64"));
        // Prefix does not match the embedded type.
        let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(ssh_public_key(&swapped)
            .unwrap_err()
            .contains("holds a \"ssh-ed25519\""));
        let p256_as_384 = P256.replacen("nistp256", "nistp384", 1);
        assert!(ssh_public_key(&p256_as_384)
            .unwrap_err()
            .contains("holds a"));
        // Truncated blob.
        let (kind, rest) = ED25519.split_once(' ').unwrap();
        let truncated = format!("{kind} {}", &rest[..40]);
        assert!(ssh_public_key(&truncated).unwrap_err().contains("damaged"));
        // Extra bytes after the key.
        let extra = wire(&[b"ssh-ed25519", &[1u8; 32], b"x"]);
        assert!(ssh_public_key(&format!("ssh-ed25519 {}", b64(&extra)))
            .unwrap_err()
            .contains("extra bytes"));
        // Curve name mismatch inside the blob.
        let mut point = vec![4u8];
        point.extend_from_slice(&[1u8; 64]);
        let blob = wire(&[b"ecdsa-sha2-nistp256", b"nistp384", &point]);
        assert!(
            ssh_public_key(&format!("ecdsa-sha2-nistp256 {}", b64(&blob)))
                .unwrap_err()
                .contains("curve")
        );
    }

    #[test]
    fn mpint_bit_count() {
        assert_eq!(mpint_bits(&[0, 0x80, 0]), 16);
        assert_eq!(mpint_bits(&[0x01, 0]), 9);
        assert_eq!(mpint_bits(&[0]), 0);
    }

    #[test]
    fn base64_roundtrip() {
        for n in 0..10 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            assert_eq!(base64_decode(&b64(&data)).unwrap(), data);
        }
        assert!(base64_decode("A").is_none());
    }

    #[test]
    fn emails() {
        assert_eq!(email(" Admin@Example.ORG ").unwrap(), "Admin@example.org");
        assert!(email("admin.example.org").unwrap_err().contains("no @"));
        assert!(email("@example.org").unwrap_err().contains("1 to 64"));
        assert!(email("ad min@example.org").unwrap_err().contains("\" \""));
        assert!(email("admin@localhost")
            .unwrap_err()
            .contains("after the @"));
        assert!(email(".admin@example.org").unwrap_err().contains("dot"));
    }

    #[test]
    fn timezones() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("Europe")).unwrap();
        std::fs::write(d.path().join("Europe/Berlin"), "TZif").unwrap();
        std::fs::write(d.path().join("UTC"), "TZif").unwrap();
        assert_eq!(
            timezone("Europe/Berlin", d.path()).unwrap(),
            "Europe/Berlin"
        );
        assert_eq!(timezone(" UTC ", d.path()).unwrap(), "UTC");
        assert!(timezone("Europe", d.path())
            .unwrap_err()
            .contains("no time zone"));
        assert!(timezone("europe/berlin", d.path())
            .unwrap_err()
            .contains("capital letters"));
        assert!(timezone("../../etc/passwd", d.path())
            .unwrap_err()
            .contains("not a time zone name"));
        assert!(timezone("/etc/passwd", d.path())
            .unwrap_err()
            .contains("not a time zone name"));
        assert!(timezone("", d.path()).unwrap_err().contains("Please enter"));
    }

    #[test]
    fn times_and_minutes() {
        assert_eq!(time_of_day("23:30").unwrap(), "23:30");
        assert_eq!(time_of_day("7:05").unwrap(), "07:05");
        assert!(time_of_day("24:00").unwrap_err().contains("00 to 23"));
        assert!(time_of_day("12:60").unwrap_err().contains("00 to 59"));
        assert!(time_of_day("noon").unwrap_err().contains("HH:MM"));
        assert!(time_of_day("12:5").unwrap_err().contains("HH:MM"));
        assert_eq!(idle_minutes_text("0").unwrap(), 0);
        assert_eq!(idle_minutes_text("60").unwrap(), 60);
        assert_eq!(idle_minutes_text("1"), Ok(1));
        assert!(idle_minutes_text("-1").unwrap_err().contains("negative"));
        assert!(idle_minutes_text("999999")
            .unwrap_err()
            .contains("more than a week"));
        assert!(idle_minutes_text("soon")
            .unwrap_err()
            .contains("not a number"));
    }
}
