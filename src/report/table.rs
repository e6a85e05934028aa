//! Plain-text tables for a terminal: columns aligned, numbers right,
//! the widest text columns cut with `…` to fit a width, optional colour.
//!
//! Everything printed comes from peers (user agents, user names), so
//! control characters are replaced before anything is measured or
//! written: a session's user agent must not be able to move the cursor or
//! recolour the on-call engineer's terminal.

/// How a cell is coloured on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    /// Needs attention (orphaned sessions, a vCenter near its limit).
    Bad,
    /// Worth a look (shared or pending sessions).
    Warn,
    /// Fine (attributed sessions).
    Good,
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub tone: Tone,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Self {
        Cell {
            text: printable(&text.into()),
            tone: Tone::Plain,
        }
    }

    pub fn tone(mut self, tone: Tone) -> Self {
        self.tone = tone;
        self
    }
}

/// A count that is coloured `tone` when it is not zero and shown as `-`
/// when it is.
pub fn count_cell(n: u64, tone: Tone) -> Cell {
    if n == 0 {
        Cell::new("-")
    } else {
        Cell::new(thousands(n)).tone(tone)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A column: its header, alignment and whether it may be cut or hidden
/// to fit.
#[derive(Debug, Clone)]
pub struct Column {
    pub header: &'static str,
    pub align: Align,
    /// Cut with `…` when the table is wider than the terminal; the
    /// narrowest a flexible column gets is [`MIN_FLEX`].
    pub flexible: bool,
    /// Hidden, last first, when cutting is not enough (details shown
    /// elsewhere: another view, `-o wide`).
    pub optional: bool,
}

impl Column {
    pub fn text(header: &'static str) -> Self {
        Column {
            header,
            align: Align::Left,
            flexible: false,
            optional: false,
        }
    }

    pub fn flex(header: &'static str) -> Self {
        Column {
            flexible: true,
            ..Column::text(header)
        }
    }

    pub fn number(header: &'static str) -> Self {
        Column {
            align: Align::Right,
            ..Column::text(header)
        }
    }

    /// This column may be hidden on a narrow terminal.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

/// The narrowest a flexible column is cut to.
pub const MIN_FLEX: usize = 12;
const GAP: &str = "  ";

#[derive(Debug, Clone)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: Vec<Column>) -> Self {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// The table as lines, fitted to `width` columns when given (by
    /// cutting the flexible columns, widest first, then hiding optional
    /// columns, last first, with a note saying which), coloured with ANSI
    /// codes when `colour`. Trailing spaces are trimmed.
    pub fn render(&self, width: Option<usize>, colour: bool) -> String {
        let mut table = self.clone();
        let mut hidden = Vec::new();
        let mut widths = table.fitted_widths(width);
        while width.is_some_and(|limit| total(&widths) > limit) {
            let Some(i) = table.columns.iter().rposition(|c| c.optional) else {
                break;
            };
            hidden.push(table.columns.remove(i).header);
            for row in &mut table.rows {
                row.remove(i);
            }
            widths = table.fitted_widths(width);
        }
        let mut out = String::new();
        let header: Vec<Cell> = table.columns.iter().map(|c| Cell::new(c.header)).collect();
        table.line(&mut out, &header, &widths, colour, true);
        for row in &table.rows {
            table.line(&mut out, row, &widths, colour, false);
        }
        if !hidden.is_empty() {
            hidden.reverse();
            out.push_str(&format!(
                "({} hidden to fit {} columns; -o wide shows everything)\n",
                hidden.join(", "),
                width.unwrap_or_default()
            ));
        }
        out
    }

    fn line(&self, out: &mut String, row: &[Cell], widths: &[usize], colour: bool, header: bool) {
        let mut line = String::new();
        for (i, (cell, column)) in row.iter().zip(&self.columns).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            let text = cut(&cell.text, widths[i]);
            let pad = widths[i].saturating_sub(chars(&text));
            let (start, end) = match (colour, header, cell.tone) {
                (false, _, _) | (true, false, Tone::Plain) => ("", ""),
                (true, true, _) => ("\x1b[1m", "\x1b[0m"),
                (true, false, Tone::Bad) => ("\x1b[31m", "\x1b[0m"),
                (true, false, Tone::Warn) => ("\x1b[33m", "\x1b[0m"),
                (true, false, Tone::Good) => ("\x1b[32m", "\x1b[0m"),
            };
            let last = i + 1 == row.len();
            match column.align {
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(start);
                    line.push_str(&text);
                    line.push_str(end);
                }
                Align::Left => {
                    line.push_str(start);
                    line.push_str(&text);
                    line.push_str(end);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }

    /// Each column's width: its widest cell, then, while the table is
    /// wider than `width`, the widest flexible column loses one character
    /// (never below [`MIN_FLEX`] or its header).
    fn fitted_widths(&self, width: Option<usize>) -> Vec<usize> {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.rows
                    .iter()
                    .map(|r| chars(&r[i].text))
                    .chain([chars(c.header)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let Some(limit) = width else {
            return widths;
        };
        let mut excess = total(&widths).saturating_sub(limit);
        while excess > 0 {
            let floor = |i: usize| MIN_FLEX.max(chars(self.columns[i].header));
            let widest = (0..widths.len())
                .filter(|&i| self.columns[i].flexible && widths[i] > floor(i))
                .max_by_key(|&i| (widths[i], std::cmp::Reverse(i)));
            let Some(i) = widest else {
                break;
            };
            // Cut down to the next widest flexible column at once, so
            // wide tables fit in a few steps rather than one per character.
            let next = (0..widths.len())
                .filter(|&j| j != i && self.columns[j].flexible)
                .map(|j| widths[j])
                .filter(|&w| w < widths[i])
                .max()
                .unwrap_or(0)
                .max(floor(i));
            let step = (widths[i] - next).clamp(1, excess);
            widths[i] -= step;
            excess -= step;
        }
        widths
    }
}

/// The width of a line with columns this wide.
fn total(widths: &[usize]) -> usize {
    widths.iter().sum::<usize>() + GAP.len() * widths.len().saturating_sub(1)
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

/// `text` cut to `width` characters, the last one `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if chars(text) <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Control characters (escape sequences, newlines, tabs) and invisible
/// formatting characters (bidirectional overrides, zero-width characters,
/// which could reorder or hide text) replaced by `�`.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || is_invisible_format(c) {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// Unicode format characters that change how text around them shows.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{feff}')
}

/// `2812` as `2,812`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// An age or idle time in the two largest units: `<1m`, `45m`, `3h12m`,
/// `2d4h`; `?` when unknown.
pub fn age(seconds: Option<u64>) -> String {
    let Some(s) = seconds else {
        return "?".into();
    };
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if m == 0 => "<1m".into(),
        _ if h == 0 => format!("{m}m"),
        _ if d == 0 => format!("{h}h{:02}m", m % 60),
        _ => format!("{d}d{:02}h", h % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(vec![
            Column::text("USER"),
            Column::flex("AGENT"),
            Column::number("SESSIONS"),
        ]);
        t.push(vec![
            Cell::new("ci_user_01"),
            Cell::new("k8s-csi-useragent-ci-op-aaaaaaaa-af877-4p9dw"),
            Cell::new("12"),
        ]);
        t.push(vec![Cell::new("u2"), Cell::new("govc"), Cell::new("1,204")]);
        t
    }

    #[test]
    fn columns_align_and_numbers_sit_right() {
        let want = "\
USER        AGENT                                         SESSIONS
ci_user_01  k8s-csi-useragent-ci-op-aaaaaaaa-af877-4p9dw        12
u2          govc                                             1,204
";
        assert_eq!(table().render(None, false), want);
    }

    #[test]
    fn a_narrow_terminal_cuts_the_flexible_column_with_an_ellipsis() {
        let out = table().render(Some(40), false);
        for line in out.lines() {
            assert!(line.chars().count() <= 40, "{line:?} is wider than 40");
        }
        // 40 = USER 10 + 2 + AGENT + 2 + SESSIONS 8: AGENT gets 18.
        assert!(out.contains("  k8s-csi-useragent…  "), "{out}");
        // Too narrow for even the minimum: the floor holds, nothing breaks.
        let tiny = table().render(Some(5), false);
        assert!(tiny.contains("k8s-csi-use…"), "{tiny}");
    }

    #[test]
    fn optional_columns_hide_last_first_when_cutting_is_not_enough() {
        let mut t = Table::new(vec![
            Column::flex("AGENT"),
            Column::number("SESSIONS"),
            Column::flex("JOBS").optional(),
            Column::flex("REASONS").optional(),
        ]);
        t.push(vec![
            Cell::new("k8s-csi-useragent-ci-op-aaaaaaaa-af877-4p9dw"),
            Cell::new("3"),
            Cell::new("#2001 pull-ci-openshift-vsphere-csi-driver-main-e2e-vsphere"),
            Cell::new("job_ended ×2"),
        ]);
        // 12 + 2 + 8 + 2 + 12 + 2 + 12 = 50 fits with everything cut.
        let fits = t.render(Some(50), false);
        assert!(
            fits.starts_with("AGENT         SESSIONS  JOBS          REASONS\n"),
            "{fits}"
        );
        let narrow = t.render(Some(30), false);
        for line in narrow.lines().take(2) {
            assert!(line.chars().count() <= 30, "{line:?}");
        }
        // With the lists hidden, the agent gets the room back: 30 - 2 - 8.
        assert!(
            narrow.starts_with("AGENT                 SESSIONS\nk8s-csi-useragent-c…         3\n"),
            "{narrow}"
        );
        assert!(
            narrow
                .ends_with("(JOBS, REASONS hidden to fit 30 columns; -o wide shows everything)\n"),
            "{narrow}"
        );
    }

    #[test]
    fn colour_only_when_asked_and_escape_sequences_from_peers_are_defused() {
        let mut t = Table::new(vec![Column::text("AGENT"), Column::number("N")]);
        t.push(vec![
            Cell::new("evil\x1b[2Jagent\n"),
            Cell::new("3").tone(Tone::Bad),
        ]);
        let plain = t.render(None, false);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert!(plain.contains("evil\u{fffd}[2Jagent\u{fffd}"), "{plain:?}");
        // A right-to-left override would show `lmth.exe` as `exe.html`.
        assert_eq!(
            printable("a\u{202e}lmth.exe\u{200b}"),
            "a\u{fffd}lmth.exe\u{fffd}"
        );
        let coloured = t.render(None, true);
        assert!(coloured.contains("\x1b[31m3\x1b[0m"), "{coloured:?}");
        assert!(coloured.contains("\x1b[1mAGENT\x1b[0m"), "{coloured:?}");
    }

    #[test]
    fn numbers_and_ages_read_like_a_person_writes_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2812), "2,812");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(age(None), "?");
        assert_eq!(age(Some(59)), "<1m");
        assert_eq!(age(Some(45 * 60 + 5)), "45m");
        assert_eq!(age(Some(3 * 3600 + 12 * 60)), "3h12m");
        assert_eq!(age(Some(2 * 86_400 + 4 * 3600 + 59)), "2d04h");
    }
}
