//! What a cluster may be called, and how anything a peer chose is printed.
//!
//! Cluster ids, names and labels come from agents, which run in clusters we do not control.
//! They end up in `skoalactl` tables, in plan selectors (labels pick the canary and the waves)
//! and in file names (backups are kept per cluster id), so the coordinator accepts only the
//! syntax Kubernetes itself uses, and `skoalactl` escapes control characters in whatever it
//! prints, so a string that slipped in some other way can still not drive an operator's
//! terminal. One place, shared by the agent (fail fast), the coordinator (the check that
//! counts) and `skoalactl`.

use std::borrow::Cow;

/// Longest cluster id: a DNS-1123 label (a `kube-system` namespace UID has 36 characters).
pub const MAX_CLUSTER_ID_LEN: usize = 63;
/// Longest cluster name: a DNS-1123 subdomain.
pub const MAX_NAME_LEN: usize = 253;
/// Most labels one cluster may carry.
pub const MAX_LABELS: usize = 64;
/// The control plane's id and name in every fleet view: never a worker's.
pub const CONTROL_PLANE_ID: &str = "control-plane";

/// Why a name or label is refused; the message says what is allowed. The refused string is
/// kept [`clipped`], so the message is safe to print and to audit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a DNS-1123 label.
    #[error(
        "cluster id \"{0}\" is not a DNS-1123 label (1-63 characters of [a-z0-9-], starting and ending with a letter or digit)"
    )]
    ClusterId(String),
    /// Not a DNS-1123 subdomain.
    #[error(
        "cluster name \"{0}\" is not a DNS-1123 subdomain (1-253 characters of [a-z0-9-.], each part starting and ending with a letter or digit)"
    )]
    Name(String),
    /// Not a DNS-1123 label.
    #[error(
        "admin name \"{0}\" is not a DNS-1123 label (1-63 characters of [a-z0-9-], starting and ending with a letter or digit)"
    )]
    Operator(String),
    /// The control plane's own id or name.
    #[error("\"{0}\" is reserved for the control plane")]
    Reserved(String),
    /// Not a Kubernetes label key.
    #[error(
        "label key \"{0}\" is not a Kubernetes label key ([prefix/]name: a DNS-1123 subdomain prefix, a name of 1-63 characters of [A-Za-z0-9-_.] starting and ending with a letter or digit)"
    )]
    LabelKey(String),
    /// Not a Kubernetes label value.
    #[error(
        "label value \"{value}\" of \"{key}\" is not a Kubernetes label value (0-63 characters of [A-Za-z0-9-_.], starting and ending with a letter or digit)"
    )]
    LabelValue {
        /// The label's key.
        key: String,
        /// The refused value.
        value: String,
    },
    /// More than [`MAX_LABELS`].
    #[error("{0} labels; at most {MAX_LABELS} are allowed")]
    TooManyLabels(usize),
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most `max` characters.
fn dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && s.split('.').all(|part| dns_label(part, 63))
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters (a label's name part and
/// value).
fn label_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Checks a worker's cluster id: a DNS-1123 label, not the control plane's.
pub fn cluster_id(id: &str) -> Result<(), NameError> {
    if !dns_label(id, MAX_CLUSTER_ID_LEN) {
        return Err(NameError::ClusterId(clipped(id)));
    }
    if id == CONTROL_PLANE_ID {
        return Err(NameError::Reserved(clipped(id)));
    }
    Ok(())
}

/// Checks a worker's cluster name: a DNS-1123 subdomain, not the control plane's.
pub fn cluster_name(name: &str) -> Result<(), NameError> {
    if !dns_subdomain(name) {
        return Err(NameError::Name(clipped(name)));
    }
    if name == CONTROL_PLANE_ID {
        return Err(NameError::Reserved(clipped(name)));
    }
    Ok(())
}

/// Checks an operator's name (`skoalactl admin create NAME`): a DNS-1123 label.
pub fn operator_name(name: &str) -> Result<(), NameError> {
    if dns_label(name, 63) {
        Ok(())
    } else {
        Err(NameError::Operator(clipped(name)))
    }
}

/// Checks one label with Kubernetes' syntax.
pub fn label(key: &str, value: &str) -> Result<(), NameError> {
    let name = match key.split_once('/') {
        Some((prefix, name)) if dns_subdomain(prefix) => name,
        Some(_) => return Err(NameError::LabelKey(clipped(key))),
        None => key,
    };
    if !label_word(name) {
        return Err(NameError::LabelKey(clipped(key)));
    }
    if !value.is_empty() && !label_word(value) {
        return Err(NameError::LabelValue {
            key: clipped(key),
            value: clipped(value),
        });
    }
    Ok(())
}

/// Checks a cluster's labels: each one, and how many.
pub fn labels<'a>(
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), NameError> {
    if labels.len() > MAX_LABELS {
        return Err(NameError::TooManyLabels(labels.len()));
    }
    for (k, v) in labels {
        label(k, v)?;
    }
    Ok(())
}

/// A valid cluster name made from a free-form one (a kubeconfig's cluster name such as
/// `gke_project_zone_prod` or an EKS ARN): lower case, every other character a `-`, runs of
/// them collapsed. `None` when nothing usable is left.
pub fn name_from(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').to_string();
    out.truncate(63);
    let out = out.trim_end_matches('-').to_string();
    cluster_name(&out).is_ok().then_some(out)
}

/// `s` as it may be printed on a terminal: control characters (escape sequences, carriage
/// returns, backspaces) and the invisible characters that reorder text are shown as `\u{..}`
/// escapes instead of acting on the terminal.
pub fn printable(s: &str) -> Cow<'_, str> {
    fn hostile(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    }
    if !s.chars().any(hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hostile(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most this many characters of a refused string are kept in messages and the audit log.
const CLIP: usize = 128;

/// A string a peer chose, made fit for a message or an audit entry whatever it holds:
/// [`printable`], and at most 128 characters (a refused name may be megabytes).
pub fn clipped(s: &str) -> String {
    let mut out: String = s.chars().take(CLIP).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    printable(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_dns_labels_and_the_control_plane_is_reserved() {
        for ok in ["0a1b2c3d-aaaa-bbbb-cccc-0123456789ab", "uid-1", "a"] {
            assert_eq!(cluster_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a\u{1b}[2J",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(cluster_id(bad), Err(NameError::ClusterId(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            cluster_id("control-plane"),
            Err(NameError::Reserved("control-plane".into()))
        );
    }

    #[test]
    fn names_are_dns_subdomains() {
        for ok in ["work-1", "eu.prod-3", "a"] {
            assert_eq!(cluster_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "Prod",
            "a b",
            "a\u{7}",
            "\u{202e}a",
            "0-canary\n",
        ] {
            assert!(cluster_name(bad).is_err(), "{bad:?}");
        }
        assert!(cluster_name(&"a".repeat(254)).is_err());
        assert!(matches!(
            cluster_name("control-plane"),
            Err(NameError::Reserved(_))
        ));
    }

    #[test]
    fn labels_follow_kubernetes() {
        for (k, v) in [
            ("tier", "prod"),
            ("example.com/ring", "canary_1"),
            ("A.b-c_d", ""),
        ] {
            assert_eq!(label(k, v), Ok(()), "{k}={v}");
        }
        for (k, v) in [
            ("", "x"),
            ("-a", "x"),
            ("a/b/c", "x"),
            ("Bad_Prefix/a", "x"),
            ("/a", "x"),
        ] {
            assert!(matches!(label(k, v), Err(NameError::LabelKey(_))), "{k}");
        }
        for v in ["-x", "x y", "x\u{1b}", &"v".repeat(64)] {
            assert!(
                matches!(label("k", v), Err(NameError::LabelValue { .. })),
                "{v:?}"
            );
        }
        let many: std::collections::BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(
            labels(many.iter()),
            Err(NameError::TooManyLabels(MAX_LABELS + 1))
        );
    }

    #[test]
    fn free_form_names_are_made_valid() {
        assert_eq!(
            name_from("gke_my-project_us-central1_prod").as_deref(),
            Some("gke-my-project-us-central1-prod")
        );
        assert_eq!(
            name_from("arn:aws:eks:eu-west-1:123:cluster/Prod").as_deref(),
            Some("arn-aws-eks-eu-west-1-123-cluster-prod")
        );
        assert_eq!(name_from("kind-kind").as_deref(), Some("kind-kind"));
        assert_eq!(name_from("__"), None);
        assert_eq!(name_from("control-plane"), None);
        let long = name_from(&"x_".repeat(100)).expect("valid");
        assert!(long.len() <= 63 && cluster_name(&long).is_ok(), "{long}");
    }

    #[test]
    fn control_characters_are_escaped_for_printing() {
        assert!(matches!(printable("work-1"), Cow::Borrowed("work-1")));
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\r\ny"), "x\\u{d}\\u{a}y");
        assert_eq!(printable("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(printable("Zürich"), "Zürich");
    }

    #[test]
    fn refused_strings_are_clipped_and_escaped_in_messages() {
        let long = format!("\u{1b}]0;{}", "x".repeat(10_000));
        let e = cluster_name(&long).expect_err("invalid").to_string();
        assert!(e.len() < 400, "{e}");
        assert!(e.contains("\\u{1b}]0;x") && !e.contains('\u{1b}'), "{e}");
        assert_eq!(clipped("a\u{7}"), "a\\u{7}");
    }
}
