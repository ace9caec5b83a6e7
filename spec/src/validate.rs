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
pub(crate) mod tests;
