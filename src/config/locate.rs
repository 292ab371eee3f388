//! Finds the line of a node in a YAML document by its path, for errors found after parsing.
//!
//! serde reports lines for syntax and type errors itself; semantic checks (duplicates,
//! conflicting fields) run on the parsed tree. A [`Locator`] reads the document's events once
//! into an index of node lines (without recursion, so any depth is fine), and each error then
//! finds its line by walking its path: checking a file costs one pass however many errors it has.

use std::cell::OnceCell;

use saphyr_parser::{Event, Parser};

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// A mapping's value by key.
    Key(&'a str),
    /// A sequence's element by index.
    Index(usize),
}

/// The lines of a document's nodes, read once.
#[derive(Debug, Default)]
pub struct Locator {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    /// 1-based.
    line: usize,
    children: Children,
}

#[derive(Debug)]
enum Children {
    Map(Vec<(String, usize)>),
    Seq(Vec<usize>),
    None,
}

/// A mapping or sequence being read.
struct Open {
    node: usize,
    /// A mapping's key whose value comes next, or `None` when a key comes next.
    key: Option<String>,
}

impl Locator {
    /// Reads `source`'s nodes (as far as it parses).
    pub fn new(source: &str) -> Self {
        let mut nodes: Vec<Node> = Vec::new();
        let mut open: Vec<Open> = Vec::new();
        for (event, span) in Parser::new_from_str(source).map_while(Result::ok) {
            let children = match &event {
                Event::MappingEnd | Event::SequenceEnd => {
                    open.pop();
                    continue;
                }
                Event::MappingStart(..) => Children::Map(Vec::new()),
                Event::SequenceStart(..) => Children::Seq(Vec::new()),
                Event::Scalar(..) | Event::Alias(..) => Children::None,
                _ => continue,
            };
            let starts = !matches!(children, Children::None);
            let index = nodes.len();
            // A plain key of a mapping names the next value instead of being a node.
            if let Some(parent) = open.last_mut() {
                let is_map = matches!(nodes[parent.node].children, Children::Map(_));
                if is_map && parent.key.is_none() {
                    parent.key = Some(match &event {
                        Event::Scalar(text, ..) => text.to_string(),
                        // A complex key: its own node, never looked up.
                        _ => String::new(),
                    });
                    if starts {
                        nodes.push(Node {
                            line: span.start.line(),
                            children,
                        });
                        open.push(Open {
                            node: index,
                            key: None,
                        });
                    }
                    continue;
                }
            }
            nodes.push(Node {
                line: span.start.line(),
                children,
            });
            if let Some(parent) = open.last_mut() {
                match &mut nodes[parent.node].children {
                    Children::Map(entries) => {
                        entries.push((parent.key.take().unwrap_or_default(), index));
                    }
                    Children::Seq(elements) => elements.push(index),
                    Children::None => {}
                }
            }
            if starts {
                open.push(Open {
                    node: index,
                    key: None,
                });
            }
        }
        Self { nodes }
    }

    /// The 1-based line where the node at `path` starts, if the document has it.
    pub fn line_of(&self, path: &[Step<'_>]) -> Option<usize> {
        let mut node = self.nodes.first()?;
        for step in path {
            let next = match (&node.children, step) {
                (Children::Map(entries), Step::Key(wanted)) => {
                    entries.iter().find(|(key, _)| key == wanted)?.1
                }
                (Children::Seq(elements), Step::Index(index)) => *elements.get(*index)?,
                _ => return None,
            };
            node = &self.nodes[next];
        }
        Some(node.line)
    }
}

/// A [`Locator`] made on first use: files without errors are never indexed.
#[derive(Debug)]
pub struct LazyLocator<'a> {
    source: &'a str,
    locator: OnceCell<Locator>,
}

impl<'a> LazyLocator<'a> {
    /// For `source`.
    pub fn new(source: &'a str) -> Self {
        Self {
            source,
            locator: OnceCell::new(),
        }
    }

    /// [`Locator::line_of`].
    pub fn line_of(&self, path: &[Step<'_>]) -> Option<usize> {
        self.locator
            .get_or_init(|| Locator::new(self.source))
            .line_of(path)
    }
}

/// The line of the node at `path` in `source` (indexing it for this one question).
pub fn line_of(source: &str, path: &[Step<'_>]) -> Option<usize> {
    Locator::new(source).line_of(path)
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
    fn any_depth_is_indexed_without_recursion() {
        // The parser allows 255 levels of flow nesting; block nesting goes deeper.
        let flow = 250;
        let doc = format!("{}{}", "[".repeat(flow), "]".repeat(flow));
        assert_eq!(line_of(&doc, &vec![Step::Index(0); flow - 1]), Some(1));
        let block = 20_000;
        let doc = format!("{}x\n", "- ".repeat(block));
        assert_eq!(line_of(&doc, &vec![Step::Index(0); block]), Some(1));
    }

    #[test]
    fn keys_that_are_not_plain_are_skipped() {
        use Step::*;
        let doc = "? [a, b]\n: 1\nk:\n  - x\n";
        assert_eq!(line_of(doc, &[Key("k"), Index(0)]), Some(4));
    }

    #[test]
    fn missing_nodes_have_no_line() {
        use Step::*;
        assert_eq!(line_of(DOC, &[Key("descriptors"), Index(5)]), None);
        assert_eq!(line_of(DOC, &[Key("nope")]), None);
        assert_eq!(line_of("[1, 2", &[Index(3)]), None);
    }
}
