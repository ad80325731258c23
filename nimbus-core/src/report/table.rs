//! Aligned text tables for people: a header row, columns padded to their widest
//! cell (numbers right-aligned), and colour only when asked (on a terminal).

use std::fmt::Write;

/// How a cell is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// No colour.
    Plain,
    /// Green: a good figure.
    Good,
    /// Red: a bad figure.
    Bad,
    /// Faint: a missing or unimportant figure.
    Dim,
}

#[derive(Debug, Clone)]
struct Cell {
    text: String,
    tone: Tone,
}

/// A table being built.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<&'static str>,
    /// Right-aligned columns (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// Columns by name; a name starting with `>` is right-aligned (the `>` is not shown).
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            header: columns.iter().map(|c| c.trim_start_matches('>')).collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of plain cells, one per column.
    pub fn row(&mut self, cells: Vec<String>) {
        self.toned_row(cells.into_iter().map(|text| (text, Tone::Plain)).collect());
    }

    /// Adds a row of cells, each with its tone.
    pub fn toned_row(&mut self, cells: Vec<(String, Tone)>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|(text, tone)| Cell { text, tone })
                .collect(),
        );
    }

    /// Whether the table has no rows (the header does not count).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self, colour: bool) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.text.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self
            .header
            .iter()
            .map(|h| Cell {
                text: h.to_string(),
                tone: Tone::Plain,
            })
            .collect();
        for (n, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let text = row.get(i).map_or("", |c| c.text.as_str());
                let pad = width - text.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                let (before, after) = if self.right[i] { (pad, 0) } else { (0, pad) };
                line.push_str(&" ".repeat(before));
                let tone = if n == 0 {
                    None
                } else {
                    row.get(i).map(|c| c.tone)
                };
                match (colour, n == 0, tone) {
                    (true, true, _) => {
                        let _ = write!(line, "\x1b[1m{text}\x1b[0m");
                    }
                    (true, false, Some(Tone::Good)) => {
                        let _ = write!(line, "\x1b[32m{text}\x1b[0m");
                    }
                    (true, false, Some(Tone::Bad)) => {
                        let _ = write!(line, "\x1b[31m{text}\x1b[0m");
                    }
                    (true, false, Some(Tone::Dim)) => {
                        let _ = write!(line, "\x1b[2m{text}\x1b[0m");
                    }
                    _ => line.push_str(text),
                }
                line.push_str(&" ".repeat(after));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

pub use crate::analytics::human_duration as duration;

/// A rate as a percentage with one decimal, toned green from 90 %, red below
/// 50 %; `-` when there is none.
pub fn rate(rate: Option<f64>) -> (String, Tone) {
    match rate {
        None => ("-".into(), Tone::Dim),
        Some(r) => {
            let tone = if r >= 0.9 {
                Tone::Good
            } else if r < 0.5 {
                Tone::Bad
            } else {
                Tone::Plain
            };
            (format!("{:.1} %", r * 100.0), tone)
        }
    }
}

/// A horizontal bar of `value` out of `max`, `width` characters at most.
pub fn bar(value: i64, max: i64, width: usize) -> String {
    if max <= 0 || value <= 0 {
        return String::new();
    }
    let cells = ((value as f64 / max as f64) * width as f64)
        .round()
        .max(1.0) as usize;
    "█".repeat(cells.min(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut table = Table::new(&["NAME", ">JOBS"]);
        table.row(vec!["acme".into(), "5".into()]);
        table.row(vec!["globex-international".into(), "1234".into()]);
        assert_eq!(
            table.render(false),
            "NAME                  JOBS\nacme                     5\nglobex-international  1234\n"
        );
        assert!(table.render(true).contains("\x1b[1mNAME\x1b[0m"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(None), "-");
        assert_eq!(duration(Some(850)), "850ms");
        assert_eq!(duration(Some(4500)), "4.5s");
        assert_eq!(duration(Some(45_000)), "45s");
        assert_eq!(duration(Some(125_000)), "2m05s");
        assert_eq!(duration(Some(12_000_000)), "3h20m");
        assert_eq!(rate(Some(0.5)).0, "50.0 %");
        assert_eq!(bar(5, 10, 10), "█████");
        assert_eq!(bar(1, 1000, 10), "█");
    }
}
