//! Finds the line of a node in a YAML document by its path, for errors found after parsing.
//!
//! serde reports lines for syntax and type errors itself; semantic checks (duplicates,
//! conflicting fields) run on the parsed tree, and this walks the document's events once more
//! to point at the offending node.

use saphyr_parser::{Event, Parser};

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// A mapping's value by key.
    Key(&'a str),
    /// A sequence's element by index.
    Index(usize),
}

/// The 1-based line where the node at `path` starts, if the document has it.
pub fn line_of(source: &str, path: &[Step<'_>]) -> Option<usize> {
    let mut events = Parser::new_from_str(source).map_while(Result::ok);
    // Skip to the document's root node.
    let mut root = loop {
        let (event, span) = events.next()?;
        if !matches!(event, Event::StreamStart | Event::DocumentStart(_)) {
            break (event, span.start.line());
        }
    };
    for step in path {
        let (event, _) = &root;
        root = match (event, step) {
            (Event::MappingStart(..), Step::Key(wanted)) => loop {
                let (key, _) = events.next()?;
                match key {
                    Event::MappingEnd => return None,
                    Event::Scalar(text, ..) if text == *wanted => {
                        let (value, span) = events.next()?;
                        break (value, span.start.line());
                    }
                    other => {
                        skip_node(&mut events, &other)?;
                        let (value, _) = events.next()?;
                        skip_node(&mut events, &value)?;
                    }
                }
            },
            (Event::SequenceStart(..), Step::Index(wanted)) => {
                for _ in 0..*wanted {
                    let (element, _) = events.next()?;
                    if matches!(element, Event::SequenceEnd) {
                        return None;
                    }
                    skip_node(&mut events, &element)?;
                }
                let (element, span) = events.next()?;
                if matches!(element, Event::SequenceEnd) {
                    return None;
                }
                (element, span.start.line())
            }
            _ => return None,
        };
    }
    Some(root.1)
}

/// Consumes the rest of a node whose first event was `first`.
fn skip_node<'a, I>(events: &mut I, first: &Event<'a>) -> Option<()>
where
    I: Iterator<Item = (Event<'a>, saphyr_parser::Span)>,
{
    let mut depth = usize::from(matches!(
        first,
        Event::MappingStart(..) | Event::SequenceStart(..)
    ));
    while depth > 0 {
        match events.next()?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n      - {key: c, value: x}\n  - key: e\n    rate_limit:\n      unit: second\n";

    #[test]
    fn finds_nested_nodes() {
        use Step::*;
        assert_eq!(line_of(DOC, &[]), Some(1));
        assert_eq!(line_of(DOC, &[Key("descriptors"), Index(0)]), Some(3));
        let nested = [Key("descriptors"), Index(0), Key("descriptors"), Index(1)];
        assert_eq!(line_of(DOC, &nested), Some(6));
        let limit = [Key("descriptors"), Index(1), Key("rate_limit")];
        assert_eq!(line_of(DOC, &limit), Some(9));
    }

    #[test]
    fn missing_nodes_have_no_line() {
        use Step::*;
        assert_eq!(line_of(DOC, &[Key("descriptors"), Index(5)]), None);
        assert_eq!(line_of(DOC, &[Key("nope")]), None);
        assert_eq!(line_of("[1, 2", &[Index(3)]), None);
    }
}
