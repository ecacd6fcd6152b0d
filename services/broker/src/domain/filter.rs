//! Tag expressions (`*`, `a||b`) and the store filter built from them: tag hash first (from the consume queue,
//! no record read), then the exact tag (hash collisions).

use std::collections::HashSet;

use comet_store::{MessageFilter, StoredMessage};

use crate::error::{BrokerError, Result};

/// A parsed tag expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// `*` or empty: every message.
    All,
    /// Messages whose tag is one of these.
    Tags {
        /// The tags, exactly.
        tags: HashSet<String>,
        /// Their Java string hashes, as stored in the consume queue.
        hashes: HashSet<i64>,
    },
}

impl std::str::FromStr for TagFilter {
    type Err = BrokerError;

    fn from_str(expression: &str) -> Result<Self> {
        let expression = expression.trim();
        if expression.is_empty() || expression == "*" {
            return Ok(TagFilter::All);
        }
        let tags: HashSet<String> =
            expression.split("||").map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        if tags.is_empty() {
            return Err(BrokerError::invalid("tag_expression", format!("{expression:?} names no tag")));
        }
        if tags.iter().any(|t| t == "*") {
            return Ok(TagFilter::All);
        }
        let hashes = tags.iter().map(|t| comet_model::tag_hash(t)).collect();
        Ok(TagFilter::Tags { tags, hashes })
    }
}

impl TagFilter {
    /// The store filter, or `None` when every message matches (the store then skips filtering entirely).
    pub fn as_store_filter(&self) -> Option<&dyn MessageFilter> {
        match self {
            TagFilter::All => None,
            TagFilter::Tags { .. } => Some(self),
        }
    }
}

impl MessageFilter for TagFilter {
    fn matches_tag_hash(&self, tag_hash: i64) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags { hashes, .. } => hashes.contains(&tag_hash),
        }
    }

    fn matches(&self, msg: &StoredMessage) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags { tags, .. } => tags.contains(msg.tags()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_empty_match_everything() {
        assert_eq!("*".parse::<TagFilter>().unwrap(), TagFilter::All);
        assert_eq!("".parse::<TagFilter>().unwrap(), TagFilter::All);
        assert_eq!(" a || * ".parse::<TagFilter>().unwrap(), TagFilter::All);
        assert!("*".parse::<TagFilter>().unwrap().as_store_filter().is_none());
    }

    #[test]
    fn alternatives_are_split_trimmed_and_hashed_like_java() {
        let f: TagFilter = " TagA || TagB ||".parse().unwrap();
        let TagFilter::Tags { tags, hashes } = &f else { panic!("expected tags") };
        assert_eq!(tags.len(), 2);
        assert!(tags.contains("TagA") && tags.contains("TagB"));
        assert!(hashes.contains(&comet_model::tag_hash("TagA")));
        assert!(f.matches_tag_hash(comet_model::tag_hash("TagB")));
        assert!(!f.matches_tag_hash(comet_model::tag_hash("TagC")));
    }

    #[test]
    fn an_expression_of_only_separators_is_refused() {
        assert!("||".parse::<TagFilter>().is_err());
        assert!(" || || ".parse::<TagFilter>().is_err());
    }
}
