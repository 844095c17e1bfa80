//! Masking secrets before a string can reach a log line, an error or `Debug`.
//!
//! [`redact_url`] never parses strictly: it must mask the password of a URL that
//! is *not* well formed (an unescaped `/`, `#`, `?` or `@` in the password, a
//! mistyped `postgres:/`, no scheme at all), because that is exactly the URL whose
//! error message is about to be printed. When in doubt it masks more, never less.

/// Query or key=value parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "passwd",
    "pwd",
    "sslpassword",
    "sentinel_password",
    "secret",
    "token",
    "sasl.password",
    "authmechanismproperties",
];

/// `text` with every URL in it (a word holding `://`) passed through [`redact_url`]:
/// for command output that may echo a target's URL.
pub fn redact_urls_in(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|piece| {
            let word = piece.trim_end();
            if word.contains("://") {
                format!("{}{}", redact_url(word), &piece[word.len()..])
            } else {
                piece.to_string()
            }
        })
        .collect()
}

/// `url` with any password (user-info or secret parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (mut head, mut rest) = split_scheme(url);
    // `user:password@host` without a scheme reads as scheme `user`: when what
    // follows holds an `@` but no `:` before it, take the whole string as user-info.
    if !head.is_empty() && !head.ends_with('/') {
        if let Some(at) = rest.rfind('@') {
            if !rest[..at].contains(':') {
                (head, rest) = ("", url);
            }
        }
    }
    // User-info ends at the *last* `@`: a password may hold `@`, `/`, `?` or `#`
    // unescaped, so nothing after the first `:` of the user-info is trusted.
    let masked = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let host_and_tail = &rest[at..];
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &userinfo[..colon], host_and_tail),
                None => rest.to_string(),
            }
        }
        None => rest.to_string(),
    };
    mask_params(&format!("{head}{masked}"))
}

/// Splits off `scheme:` plus any slashes (`postgres://`, `postgres:/`, `redis:`);
/// returns `("", s)` when `s` has no scheme.
fn split_scheme(s: &str) -> (&str, &str) {
    let scheme_len = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        .count();
    if scheme_len == 0 || s.as_bytes().get(scheme_len) != Some(&b':') {
        return ("", s);
    }
    let after = &s[scheme_len + 1..];
    // `host:port` without a scheme looks like `scheme:digits`: not a scheme.
    if !after.starts_with('/') && after.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return ("", s);
    }
    let slashes = after.bytes().take_while(|b| *b == b'/').count();
    s.split_at(scheme_len + 1 + slashes)
}

/// Masks `name=value` for every secret parameter name, in a URL query or in a
/// libpq-style `key=value` string.
fn mask_params(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let before = &rest[..eq];
        let name_start = before.rfind(['?', '&', ';', ' ', ',']).map_or(0, |i| i + 1);
        let name = before[name_start..].trim().to_ascii_lowercase();
        out.push_str(&rest[..=eq]);
        let value = &rest[eq + 1..];
        if SECRET_PARAMS.contains(&name.as_str()) {
            let end = value.find(['&', ';', ' ', ',']).unwrap_or(value.len());
            out.push_str("***");
            rest = &value[end..];
        } else {
            rest = value;
        }
    }
    out.push_str(rest);
    out
}

/// A string that holds a secret: `Debug` and `Display` print `***`.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: only for handing to a client library, never for display.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Mutable access, for `${ENV}` expansion at load time.
    pub fn expose_mut(&mut self) -> &mut String {
        &mut self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A URL that may carry a password: `Debug` prints it redacted.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Mutable access, for `${ENV}` expansion at load time.
    pub fn expose_mut(&mut self) -> &mut String {
        &mut self.0
    }

    /// The URL with secrets masked.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_malformed_urls() {
        let cases = [
            "postgres://u:hunter2@h:5432/db",
            "postgres://u:hun/ter2@h:5432/db",
            "postgres://u:hun#ter2@h/db",
            "postgres://u:hun?ter2@h/db",
            "postgres://u:hun@ter2@h/db",
            "postgres:/u:hunter2@h/db",
            "postgres:u:hunter2@h/db",
            "postgresql://h/db?user=u&password=hunter2",
            "postgres://h/db?sslmode=disable&password=hunter2&x=1",
            "host=h user=u password=hunter2 dbname=d",
            "kafka://u:hunter2@h:9092",
            "redis://:hunter2@h:6379",
            "rediss://default:hunter2@h",
            "redis+sentinel://s1,s2/m?sentinel_password=hunter2",
            "redis://:hunter2/x@h:6379",
            "mongodb://u:hunter2@a:1,b:2/?replicaSet=rs0",
            "u:hunter2@h:5432",
            "mongodb+srv://u:hunter2@cluster/?authMechanismProperties=TOKEN:hunter2",
        ];
        for url in cases {
            let r = redact_url(url);
            assert!(!r.contains("hunter2"), "{url} -> {r}");
            assert!(r.contains("***"), "{url} -> {r}");
        }
    }

    #[test]
    fn keeps_what_is_not_secret() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("kafka://a:1,b:2"), "kafka://a:1,b:2");
        assert_eq!(redact_url("h:5432"), "h:5432");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn debug_hides_secrets() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        let u = SecretUrl::new("redis://:hunter2@h:1");
        assert!(!format!("{u:?}").contains("hunter2"));
    }
}
