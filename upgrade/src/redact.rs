//! Keeping values out of messages.
//!
//! Release values may hold passwords. They reach helm only through 0600 files, but helm's
//! stderr and the API server's error messages can still echo parts of a rendered manifest. A
//! [`Redactor`] knows every string value of the release (from the backup and the extra values)
//! and replaces each occurrence, and its base64 form (how it appears in a rendered Secret),
//! with `[REDACTED]`, and its JSON-escaped form (how a value with a quote, a backslash or a
//! newline appears in an API server's error). It over-redacts rather than under-redacts: a
//! value that happens to be a common word is hidden too, and a value under a key that names a
//! secret (`password`, `token`, `secret`, `key`, `credential`) is hidden however short.

use base64::Engine as _;

/// What replaces a value.
pub const MASK: &str = "[REDACTED]";

/// Strings shorter than this are not redacted (unless their key names a secret): masking every
/// `1` or `on` in a message would destroy it, and such short strings are not credentials.
const MIN_LEN: usize = 4;

/// A key containing one of these (any case) holds a secret: its value is redacted at any length.
const SECRET_KEYS: [&str; 5] = ["password", "secret", "token", "key", "credential"];

fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|k| key.contains(k))
}

/// Replaces known values in text.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another one is masked whole.
    needles: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the needles: they are the secrets.
        write!(f, "Redactor({} needles)", self.needles.len())
    }
}

impl Redactor {
    /// Adds every scalar value of a YAML document (map keys are structure, not secrets),
    /// except those in `public` (e.g. the image tags we set ourselves).
    pub fn add_yaml(&mut self, yaml: &serde_yaml::Value, public: &[String]) {
        let mut leaves = Vec::new();
        collect_leaves(yaml, false, &mut leaves);
        for (leaf, secret) in leaves {
            let long_enough = leaf.len() >= MIN_LEN || (secret && !leaf.is_empty());
            if long_enough && !public.contains(&leaf) {
                let b64 = base64::engine::general_purpose::STANDARD.encode(leaf.as_bytes());
                let quoted = serde_json::to_string(&leaf).unwrap_or_default();
                let escaped = quoted
                    .strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .unwrap_or_default();
                if !escaped.is_empty() && escaped != leaf {
                    self.needles.push(escaped.to_string());
                }
                self.needles.push(leaf);
                self.needles.push(b64);
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        self.needles.dedup();
    }

    /// `text` with every known value masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), MASK);
            }
        }
        out
    }

    /// The last `max_lines` lines of `text` (at most `max_bytes`), redacted: what a progress
    /// event carries of helm's stderr.
    pub fn tail(&self, text: &str, max_lines: usize, max_bytes: usize) -> String {
        let redacted = self.redact(text);
        let lines: Vec<&str> = redacted.lines().collect();
        let start = lines.len().saturating_sub(max_lines);
        let tail = lines[start..].join("\n");
        if tail.len() <= max_bytes {
            return tail;
        }
        let mut cut = tail.len() - max_bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…{}", &tail[cut..])
    }
}

/// Every scalar under `v`, with whether a key on its path names a secret.
fn collect_leaves(v: &serde_yaml::Value, secret: bool, out: &mut Vec<(String, bool)>) {
    use serde_yaml::Value;
    match v {
        Value::String(s) => {
            out.push((s.clone(), secret));
            // A multi-line value (a certificate, a config file) may be echoed line by line.
            if s.contains('\n') {
                out.extend(s.lines().map(|l| (l.trim().to_string(), secret)));
            }
        }
        Value::Number(n) => out.push((n.to_string(), secret)),
        Value::Sequence(items) => items.iter().for_each(|i| collect_leaves(i, secret, out)),
        Value::Mapping(m) => m.iter().for_each(|(k, i)| {
            let named = k.as_str().is_some_and(names_a_secret);
            collect_leaves(i, secret || named, out)
        }),
        Value::Tagged(t) => collect_leaves(&t.value, secret, out),
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(yaml: &str) -> Redactor {
        let mut r = Redactor::default();
        r.add_yaml(
            &serde_yaml::from_str(yaml).expect("yaml"),
            &["v0.19.2".into()],
        );
        r
    }

    #[test]
    fn masks_values_and_their_base64() {
        let r = redactor("auth:\n  password: hunter2-xyz\nimage:\n  tag: v0.19.2\nport: 12345\n");
        let msg = "Secret data.password=aHVudGVyMi14eXo= (hunter2-xyz) tag v0.19.2 port 12345";
        let out = r.redact(msg);
        assert!(!out.contains("hunter2-xyz"), "{out}");
        assert!(!out.contains("aHVudGVyMi14eXo="), "{out}");
        assert!(!out.contains("12345"), "{out}");
        assert!(out.contains("v0.19.2"), "public tags stay readable: {out}");
    }

    #[test]
    fn masks_short_secrets_and_escaped_forms() {
        let r = redactor("db:\n  password: ab1\nnote: 'say \"hi\" \\ bye'\nname: abc\n");
        let out = r.redact(r#"auth failed for ab1; field "note": "say \"hi\" \\ bye"; user abc"#);
        assert!(
            !out.contains("ab1"),
            "a short password is still a password: {out}"
        );
        assert!(
            !out.contains(r#"say \"hi\""#),
            "the JSON-escaped form: {out}"
        );
        assert!(
            out.contains("abc"),
            "a short value under an ordinary key stays: {out}"
        );
    }

    #[test]
    fn masks_lines_of_multiline_values() {
        let r = redactor(
            "tls:\n  key: |\n    -----BEGIN KEY-----\n    c2VjcmV0LWtleS1ib2R5\n    -----END KEY-----\n",
        );
        let out = r.redact("error at line 3: c2VjcmV0LWtleS1ib2R5");
        assert!(!out.contains("c2VjcmV0LWtleS1ib2R5"), "{out}");
    }

    #[test]
    fn tail_keeps_the_last_lines_within_bounds() {
        let r = Redactor::default();
        let text = (0..100)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let tail = r.tail(&text, 3, 1000);
        assert_eq!(tail, "line 97\nline 98\nline 99");
        assert!(r.tail(&text, 100, 20).len() <= 20 + "…".len());
    }

    #[test]
    fn debug_does_not_print_needles() {
        let r = redactor("password: hunter2-xyz\n");
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
