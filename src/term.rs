//! What the command line draws on a terminal: aligned tables
//! (comfy-table, no borders; one look for `kmsd products`, `kmsd clients`
//! and `kmsd licenses`) and progress bars (indicatif) for the long
//! commands (`kmsd store copy`, `kmsd licenses import`).

use comfy_table::{CellAlignment, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar of `len` steps saying `what`, drawn on standard error when it is
/// a terminal (hidden otherwise: logs and pipes get no control codes).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// A table with `header`; columns listed in `right` are right-aligned
/// (numbers).
pub fn table(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for &c in right {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_and_numbers_go_right() {
        let mut t = super::table(&["name", "n"], &[1]);
        t.add_row(vec!["a", "7"]);
        t.add_row(vec!["longer", "1234"]);
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("NAME") && lines[0].contains('N'));
        // The numbers end in the same column.
        let end = |l: &str| l.trim_end().len();
        assert_eq!(end(lines[1]), end(lines[2]), "{text}");
    }
}
