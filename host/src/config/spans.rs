//! Where in the TOML text a problem is: key paths, spans, line and column. Shared with the
//! scenario parser of the offline harness.

use std::ops::Range;

use serde_spanned::Spanned;
use toml::de::DeValue;

/// One step of a path into the TOML tree.
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

fn span_contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || span.start == offset
}

/// The path to the innermost key or array item whose span holds `offset`.
pub(crate) fn locate(value: &DeValue<'_>, offset: usize) -> Option<Vec<Segment>> {
    match value {
        DeValue::Table(table) => table.iter().find_map(|(key, item)| {
            let here = || vec![Segment::Key(key.get_ref().to_string())];
            if span_contains(&key.span(), offset) {
                return Some(here());
            }
            if let Some(mut inner) = locate(item.get_ref(), offset) {
                inner.insert(0, Segment::Key(key.get_ref().to_string()));
                return Some(inner);
            }
            span_contains(&item.span(), offset).then(here)
        }),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            if let Some(mut inner) = locate(item.get_ref(), offset) {
                inner.insert(0, Segment::Index(i));
                return Some(inner);
            }
            span_contains(&item.span(), offset).then(|| vec![Segment::Index(i)])
        }),
        _ => None,
    }
}

/// Removes the innermost table key on `path`; false when there is none.
pub(super) fn remove_deepest_key(value: &mut DeValue<'_>, path: &[Segment]) -> bool {
    let Some(last_key) = path.iter().rposition(|s| matches!(s, Segment::Key(_))) else {
        return false;
    };
    let mut current = value;
    for segment in &path[..last_key] {
        let next = match (current, segment) {
            (DeValue::Table(t), Segment::Key(k)) => t.get_mut(k.as_str()).map(Spanned::get_mut),
            (DeValue::Array(a), Segment::Index(i)) => a.get_mut(*i).map(Spanned::get_mut),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match (current, &path[last_key]) {
        (DeValue::Table(t), Segment::Key(k)) => t.remove(k.as_str()).is_some(),
        _ => false,
    }
}

/// 1-based line and character column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
