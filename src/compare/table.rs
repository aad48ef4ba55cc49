//! A table of text cells, built once and written as Markdown (report.md, the console) or
//! as HTML (index.html), so both show the same figures.

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
    Center,
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub head: Vec<String>,
    pub align: Vec<Align>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first column (the row names) is left-aligned and the rest (figures)
    /// right-aligned.
    pub fn new(head: impl IntoIterator<Item = impl Into<String>>) -> Table {
        let head: Vec<String> = head.into_iter().map(Into::into).collect();
        let align = (0..head.len())
            .map(|column| if column == 0 { Align::Left } else { Align::Right })
            .collect();
        Table {
            head,
            align,
            rows: Vec::new(),
        }
    }

    pub fn with_align(mut self, column: usize, align: Align) -> Table {
        self.align[column] = align;
        self
    }

    pub fn push(&mut self, row: impl IntoIterator<Item = impl Into<String>>) {
        self.rows.push(row.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// `| a | b |` lines, with the alignment row.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            out.push('|');
            for cell in cells {
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        };
        line(&mut out, &self.head);
        out.push('|');
        for align in &self.align {
            out.push_str(match align {
                Align::Left => "---|",
                Align::Right => "---:|",
                Align::Center => ":-:|",
            });
        }
        out.push('\n');
        for row in &self.rows {
            line(&mut out, row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_markdown() {
        let mut table = Table::new(["what", "a", "b"]).with_align(2, Align::Center);
        table.push(["x", "1", "yes"]);
        assert_eq!(table.markdown(), "| what | a | b |\n|---|---:|:-:|\n| x | 1 | yes |\n");
    }
}
