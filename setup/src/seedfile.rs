//! The seed file on the ESP (`appliance-setup.toml`) holds host passwords in clear, on a FAT
//! partition anyone holding the disk can read, and its messages go to the console and the
//! journal. So:
//!
//! - a mistake is reported by file, line, column and key only: never the line's text or a
//!   value (a typo on the password line would otherwise print the password);
//! - the copy kept for a seed that cannot be used (`appliance-setup.toml.invalid`) keeps only
//!   the values known not to be secret; every other value is replaced, and a file that is not
//!   TOML at all is replaced by a note saying where it went wrong;
//! - a seed that goes is overwritten with zeros before it is deleted ([`fsutil::erase_file`]).

use appliance_spec::seed::Seed;
use appliance_spec::validate::{escaped, shown};
use toml::{Table, Value};

/// What replaces a value in the kept copy.
const REMOVED: &str = "(removed)";

/// Parse the seed; a mistake is described without quoting the file's text.
pub fn parse(text: &str, origin: &str) -> Result<Seed, String> {
    toml::from_str(text).map_err(|e| describe_error(text, origin, &e))
}

/// Line and column (from 1) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// The key named on `line` (left of `=`), and the table header in effect there. Only names
/// made of key characters are given; anything else is not named at all.
fn key_at(text: &str, line: usize) -> (Option<String>, Option<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let is_key = |k: &str| {
        !k.is_empty()
            && k.len() <= 64
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | ' '))
    };
    let header = |l: &str| {
        let t = l.trim();
        t.starts_with('[')
            .then(|| {
                t.trim_start_matches('[')
                    .trim_end_matches(']')
                    .trim()
                    .to_string()
            })
            .filter(|h| is_key(h))
    };
    let this = lines.get(line.saturating_sub(1)).copied().unwrap_or("");
    let mut table = None;
    for l in lines.iter().take(line.saturating_sub(1)).rev() {
        if let Some(h) = header(l) {
            let double = l.trim_start().starts_with("[[");
            table = Some(if double {
                format!("[[{h}]]")
            } else {
                format!("[{h}]")
            });
            break;
        }
    }
    if let Some(h) = header(this) {
        return (None, Some(format!("[{h}]")));
    }
    let key = this
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| is_key(k));
    (key, table)
}

/// "FILE: line L, column C, key `k` in [table]: what is wrong", never quoting a value.
pub fn describe_error(text: &str, origin: &str, e: &toml::de::Error) -> String {
    let msg = e.message();
    let what = if let Some(rest) = msg.strip_prefix("unknown field ") {
        // "unknown field `x`, expected `a` or `b`": the expected names come from the schema.
        match rest.split_once(", expected ") {
            Some((_, expected)) => format!(
                "this key is not one the seed file knows (check its spelling); the keys allowed here are {expected}"
            ),
            None => "this key is not one the seed file knows (check its spelling)".into(),
        }
    } else if msg.starts_with("missing field ") {
        // "missing field `name`": a name from the schema.
        format!("a required key is missing ({})", &msg["missing ".len()..])
    } else if msg.starts_with("invalid type") {
        "the value has the wrong type: text goes in double quotes, numbers and true/false without, lists in [ ]".into()
    } else if msg.contains("duplicate key") {
        "this key is given twice".into()
    } else {
        "this is not valid TOML (check the quotes, brackets and = signs)".into()
    };
    let Some(span) = e.span() else {
        return format!("{origin}: {what}");
    };
    let (line, col) = position(text, span.start);
    let (key, table) = key_at(text, line);
    let mut at = format!("line {line}, column {col}");
    if let Some(k) = key {
        at.push_str(&format!(", key `{}`", shown(&k)));
    }
    if let Some(t) = table {
        at.push_str(&format!(" in {}", shown(&t)));
    }
    format!("{origin}: {at}: {what}")
}

/// Keys whose values are kept in the copy of a seed that could not be used; `hosts`,
/// `letsencrypt` and `power_off` are tables whose listed keys are kept.
fn kept_keys(table: Option<&str>) -> &'static [&'static str] {
    match table {
        None => &["domain", "timezone", "ssh_authorized_keys"],
        Some("hosts") => &["name"],
        Some("letsencrypt") => &["email", "accept_terms", "directory", "ca_certificate"],
        Some("power_off") => &["idle_minutes", "daily_at"],
        Some(_) => &[],
    }
}

fn plain(v: &Value) -> bool {
    match v {
        Value::String(_) | Value::Integer(_) | Value::Boolean(_) => true,
        Value::Array(a) => a.iter().all(|x| matches!(x, Value::String(_))),
        _ => false,
    }
}

/// Every value that is not known to be harmless becomes [`REMOVED`].
fn redact(table: &Table, within: Option<&str>) -> Table {
    let mut out = Table::new();
    for (k, v) in table {
        let kept = match (within, k.as_str(), v) {
            (None, "hosts", Value::Array(items)) => Value::Array(
                items
                    .iter()
                    .map(|i| match i {
                        Value::Table(t) => Value::Table(redact(t, Some("hosts"))),
                        _ => Value::String(REMOVED.into()),
                    })
                    .collect(),
            ),
            (None, "letsencrypt" | "power_off", Value::Table(t)) => {
                Value::Table(redact(t, Some(k.as_str())))
            }
            _ if kept_keys(within).contains(&k.as_str()) && plain(v) => v.clone(),
            _ => Value::String(REMOVED.into()),
        };
        out.insert(k.clone(), kept);
    }
    out
}

/// The text of `appliance-setup.toml.invalid`: why the seed was not used, then the seed
/// without anything that could be a secret.
pub fn redacted_copy(text: &str, problems: &[String]) -> String {
    let mut out =
        String::from("# appliance-setup.toml could not be used (the console showed why):\n");
    for p in problems {
        for line in p.lines() {
            out.push_str(&format!("#   {}\n", escaped(line)));
        }
    }
    match text.parse::<Table>() {
        Ok(table) => {
            out.push_str("# Below is what it said, except passwords and unknown keys, whose values are\n# replaced by \"(removed)\". Correct it, put the passwords back and rename it to\n# appliance-setup.toml, or answer the setup questions instead.\n\n");
            out.push_str(&toml::to_string(&redact(&table, None)).unwrap_or_default());
        }
        Err(_) => out.push_str(
            "# It was not valid TOML, so none of it is kept here (it may have held passwords).\n# Write the file again, or answer the setup questions instead.\n",
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Tulip-Harbor-42";

    #[test]
    fn mistakes_are_located_without_their_text() {
        let cases = [
            (
                format!("domain = \"meet.localhost\"\n[[hosts]]\nname = \"alice\"\npasword = \"{SECRET}\"\n"),
                "seed: line 4, column 1, key `pasword` in [[hosts]]: this key is not one the seed file knows (check its spelling); the keys allowed here are `name` or `password`",
            ),
            (
                format!("domain = \"meet.localhost\"\n[[hosts]]\nname = \"alice\"\npassword = \"{SECRET}\n"),
                "seed: line 4, column 28, key `password` in [[hosts]]: this is not valid TOML (check the quotes, brackets and = signs)",
            ),
            (
                format!("[[hosts]]\nname = \"alice\"\npassword = {SECRET}\n"),
                "seed: line 3, column 12, key `password` in [[hosts]]: this is not valid TOML (check the quotes, brackets and = signs)",
            ),
            (
                "[[hosts]]\nname = \"a\"\npassword = 123456789012\n".to_string(),
                "seed: line 3, column 12, key `password` in [[hosts]]: the value has the wrong type: text goes in double quotes, numbers and true/false without, lists in [ ]",
            ),
            (
                format!("[[hosts]]\npassword = \"{SECRET}\"\n"),
                "seed: line 1, column 1 in [hosts]: a required key is missing (field `name`)",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(&text, "seed").unwrap_err();
            assert_eq!(e, expected);
            assert!(!e.contains(SECRET) && !e.contains("123456789012"));
        }
    }

    #[test]
    fn the_kept_copy_has_no_secret() {
        let text = format!(
            "domain = \"meet.localhost\"\nsecret_note = \"{SECRET}\"\n[[hosts]]\nname = \"alice\"\npasword = \"{SECRET}\"\n[[hosts]]\nname = \"bob\"\npassword = \"{SECRET}\"\n[power_off]\nidle_minutes = 30\n"
        );
        let copy = redacted_copy(&text, &["seed: line 5: \u{1b}[2J".into()]);
        assert!(!copy.contains(SECRET), "{copy}");
        assert!(!copy.contains('\u{1b}'), "{copy}");
        let back: Table = copy.parse().unwrap();
        assert_eq!(back["domain"].as_str(), Some("meet.localhost"));
        assert_eq!(back["secret_note"].as_str(), Some(REMOVED));
        let hosts = back["hosts"].as_array().unwrap();
        assert_eq!(hosts[0]["name"].as_str(), Some("alice"));
        assert_eq!(hosts[0]["pasword"].as_str(), Some(REMOVED));
        assert_eq!(hosts[1]["password"].as_str(), Some(REMOVED));
        assert_eq!(back["power_off"]["idle_minutes"].as_integer(), Some(30));

        let broken = format!("[[hosts]]\nname = \"alice\"\npassword = \"{SECRET}\n");
        let copy = redacted_copy(&broken, &[parse(&broken, "seed").unwrap_err()]);
        assert!(!copy.contains(SECRET), "{copy}");
        assert!(copy.contains("line 3, column"), "{copy}");
        assert!(
            copy.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "{copy}"
        );
    }
}
