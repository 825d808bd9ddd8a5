//! "Did you mean …?": the closest known name to a misspelt one.
//!
//! A candidate is close when its edit distance (Levenshtein: insertions, deletions and
//! substitutions, over characters) to the word is at most [`MAX_DISTANCE`], or when the two
//! differ only in letter case. The closest wins; ties go to the earlier candidate, so callers
//! list candidates in a meaningful order (declaration or file order).

/// The largest edit distance that still counts as a likely typo.
pub const MAX_DISTANCE: usize = 2;

/// The Levenshtein distance between `a` and `b`, over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // One row of the dynamic-programming table at a time.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, when one is close enough to be a likely typo (and is not
/// `word` itself).
pub fn closest<'c, I>(word: &str, candidates: I) -> Option<&'c str>
where
    I: IntoIterator<Item = &'c str>,
{
    let mut best: Option<(usize, &'c str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let distance = if candidate.eq_ignore_ascii_case(word) {
            0
        } else {
            edit_distance(word, candidate)
        };
        // Very short words are within two edits of everything; demand a closer match.
        let limit = MAX_DISTANCE.min(word.chars().count().max(1) - 1).max(1);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// `did you mean "x"?` for the closest candidate, if any.
pub fn did_you_mean<'c, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'c str>,
{
    closest(word, candidates).map(|c| format!("did you mean {c:?}?"))
}

/// `a, b, c`: a list for "expected one of …" hints.
pub fn list(names: &[&str]) -> String {
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("paymets_only", "payments_only"), 1);
        assert_eq!(edit_distance("icberg", "iceberg"), 1);
        assert_eq!(edit_distance("sqlit", "sqlite"), 1);
        assert_eq!(edit_distance("jsnol", "jsonl"), 2);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn suggestions() {
        let fields = ["path", "table", "format", "id_column", "client_id"];
        assert_eq!(closest("pth", fields), Some("path"));
        assert_eq!(closest("tabel", fields), Some("table"));
        assert_eq!(closest("idcolumn", fields), Some("id_column"));
        assert_eq!(closest("Path", fields), Some("path"));
        assert_eq!(closest("schedule", fields), None);
        assert_eq!(
            closest("path", fields),
            None,
            "an exact match is no suggestion"
        );
        // Ties go to the earlier candidate.
        assert_eq!(closest("ab", ["ac", "ad"]), Some("ac"));
        // One-letter words only match at distance one.
        assert_eq!(closest("x", ["id", "y"]), Some("y"));
        assert_eq!(closest("x", ["id"]), None);
        assert_eq!(
            did_you_mean("paymets_only", ["tasks_file", "payments_only"]).as_deref(),
            Some("did you mean \"payments_only\"?")
        );
        assert_eq!(did_you_mean("kafka", ["jsonl", "sqlite"]), None);
        assert_eq!(list(&["a", "b"]), "a, b");
    }
}
