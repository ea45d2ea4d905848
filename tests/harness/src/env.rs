//! Environment lists for a child: the binary gets exactly these variables, plus PATH.

/// Variables in order; a later one never shadows an earlier one, `with` replaces it.
pub type Env = Vec<(String, String)>;

/// Replaces or adds variables.
pub fn with(mut env: Env, changes: &[(&str, &str)]) -> Env {
    for (name, value) in changes {
        env.retain(|(key, _)| key != name);
        env.push(((*name).to_owned(), (*value).to_owned()));
    }
    env
}

/// Removes a variable.
pub fn without(mut env: Env, name: &str) -> Env {
    env.retain(|(key, _)| key != name);
    env
}
