//! The secrets tests hand to processes, and the one check that none of them is ever shown.

use std::sync::Mutex;

/// The API key every test hands the binary and the emulator.
pub const KEY: &str = "k3y-5ecret-7f1d9c2b";

/// Every secret handed to any process of this test binary; a process may show none of them,
/// not even another test's.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers `value` as a secret for the leak check and returns it. Short values are refused:
/// a secret must be distinctive, or the check would match ordinary words.
pub fn secret(value: &str) -> String {
    assert!(
        value.len() >= 8,
        "a test secret needs at least 8 characters to be recognisable: {value:?}"
    );
    let mut all = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    if !all.iter().any(|known| known == value) {
        all.push(value.to_owned());
    }
    value.to_owned()
}

/// Registers what a child's environment carries as secret: values of variables named like a
/// key, password, token or secret (not their `_FILE` paths), and passwords inside URLs.
pub(crate) fn register_env<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (name, value) in env {
        let upper = name.to_ascii_uppercase();
        let named_secret = ["KEY", "PASSWORD", "TOKEN", "SECRET"]
            .iter()
            .any(|word| upper.contains(word))
            && !upper.ends_with("_FILE");
        if named_secret && !value.is_empty() {
            secret(value);
        }
        if let Ok(url) = url::Url::parse(value)
            && let Some(password) = url.password()
        {
            secret(password);
        }
    }
}

/// Panics when `text`, what `source` showed, holds any registered secret.
pub fn assert_clean(source: &str, text: &str) {
    if let Some(leaked) = leaked_in(text) {
        panic!("{source} showed the secret {leaked:?}:\n{text}");
    }
}

/// The first registered secret `text` holds, if any.
pub(crate) fn leaked_in(text: &str) -> Option<String> {
    let all = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    std::iter::once(KEY)
        .chain(all.iter().map(String::as_str))
        .find(|s| text.contains(s))
        .map(str::to_owned)
}
