//! The quorum decision: which address, if any, enough distinct operators agree on.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The operators that reported each address (each operator at most once per address).
pub(crate) type Votes = BTreeMap<IpAddr, Vec<String>>;

/// How many distinct operators are in `operators`.
pub(crate) fn distinct<'a>(operators: impl IntoIterator<Item = &'a str>) -> usize {
    let mut seen: Vec<&str> = operators.into_iter().collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

/// The address with at least `quorum` operators that strictly leads every other address.
pub(crate) fn settled(votes: &Votes, quorum: usize) -> Option<IpAddr> {
    let (leader, count) = votes
        .iter()
        .map(|(ip, v)| (*ip, v.len()))
        .max_by_key(|(_, n)| *n)?;
    let contested = votes
        .iter()
        .any(|(ip, v)| *ip != leader && v.len() >= count);
    (count >= quorum && !contested).then_some(leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_needs_a_strict_leader() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut votes = Votes::new();
        votes.insert(ip("203.0.113.1"), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(settled(&votes, 2), Some(ip("203.0.113.1")));
        assert_eq!(settled(&votes, 3), None);
        votes.insert(ip("198.51.100.1"), vec!["c".to_owned(), "d".to_owned()]);
        assert_eq!(settled(&votes, 2), None, "a tie is a disagreement");
    }

    #[test]
    fn operators_are_counted_once() {
        assert_eq!(distinct(["a", "b", "a", "c", "b"]), 3);
        assert_eq!(distinct([]), 0);
    }
}
