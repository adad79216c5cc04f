//! Tag filters of subscriptions (`*`, `TagA || TagB`) and the tag hash ConsumeQueue entries
//! carry, pure.

use crate::meta::fnv1a64;

/// The hash stored in a ConsumeQueue entry for a message's tags (0 when it has none).
pub fn tag_hash(tags: Option<&str>) -> u64 {
    match tags {
        None | Some("") => 0,
        Some(t) => fnv1a64(&[t.as_bytes()]).max(1),
    }
}

/// A subscription expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// `*` or empty: every message.
    All,
    /// `A || B || ...`: messages whose tag is one of these.
    Tags(Vec<(String, u64)>),
}

impl TagFilter {
    /// Parses `*`, an empty string, or tags separated by `||` (spaces around them ignored).
    pub fn parse(expr: &str) -> TagFilter {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return TagFilter::All;
        }
        let mut tags: Vec<(String, u64)> = expr
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| (t.to_owned(), tag_hash(Some(t))))
            .collect();
        tags.dedup();
        if tags.is_empty() {
            TagFilter::All
        } else {
            TagFilter::Tags(tags)
        }
    }

    /// First check, on the entry alone (no read): may the message match?
    pub fn matches_hash(&self, hash: u64) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(tags) => tags.iter().any(|(_, h)| *h == hash),
        }
    }

    /// Second check, on the message's tag string (hashes can collide).
    pub fn matches_tags(&self, tags: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(wanted) => tags.is_some_and(|t| wanted.iter().any(|(w, _)| w == t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        assert_eq!(TagFilter::parse("*"), TagFilter::All);
        assert_eq!(TagFilter::parse("  "), TagFilter::All);
        let f = TagFilter::parse("TagA || TagB ||");
        assert!(f.matches_hash(tag_hash(Some("TagA"))));
        assert!(f.matches_hash(tag_hash(Some("TagB"))));
        assert!(!f.matches_hash(tag_hash(Some("TagC"))));
        assert!(!f.matches_hash(tag_hash(None)));
        assert!(
            f.matches_tags(Some("TagB")) && !f.matches_tags(Some("TagBB")) && !f.matches_tags(None)
        );
        assert!(TagFilter::All.matches_tags(None));
    }

    #[test]
    fn no_tag_hashes_to_zero_and_tags_never_do() {
        assert_eq!(tag_hash(None), 0);
        assert_eq!(tag_hash(Some("")), 0);
        assert_ne!(tag_hash(Some("x")), 0);
    }
}
