//! Drawing the dashboard: a pure function of [`MonitorState`] and the frame
//! size, so tests draw it on ratatui's `TestBackend` and read the text.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, Tabs, Wrap};

use super::reading::Reading;
use super::state::{Link, MonitorState, View};
use crate::cli::admin_client::human_duration;

/// Below this the dashboard says so instead of drawing a mess.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 12;

pub fn render(frame: &mut Frame, state: &MonitorState) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "terminal too small ({}x{}); the dashboard needs {MIN_WIDTH}x{MIN_HEIGHT}. q quits.",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let [tabs, status, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);

    let titles = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{} {}", i + 1, v.title()));
    let selected = View::ALL.iter().position(|v| *v == state.view);
    frame.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::new().bold().reversed()),
        tabs,
    );
    frame.render_widget(status_line(state), status);
    frame.render_widget(
        Line::from("q quit  p pause  tab/←/→ or 1-4 switch view").dim(),
        footer,
    );

    let Some(reading) = &state.reading else {
        let text = match &state.link {
            Link::Down { .. } => "no data yet: the gateway has not answered",
            _ => "connecting…",
        };
        frame.render_widget(Paragraph::new(text), body);
        return;
    };
    match state.view {
        View::Overview => overview(frame, body, state, reading),
        View::Traffic => traffic(frame, body, reading),
        View::Offenders => offenders(frame, body, reading),
        View::Blocks => blocks(frame, body, reading),
    }
}

fn status_line(state: &MonitorState) -> Line<'static> {
    let mut spans = vec![Span::raw(format!("RateThrottle {}  ", state.target)).bold()];
    match &state.link {
        Link::Connecting => spans.push(Span::raw("connecting…").fg(Color::Yellow)),
        Link::Up => {
            spans.push(Span::raw("● connected").fg(Color::Green));
            if let Some(r) = &state.reading {
                spans.push(Span::raw(format!(
                    "  up {}",
                    human_duration(r.uptime_seconds)
                )));
            }
        }
        Link::Down { error, failures } => spans.push(
            Span::raw(format!(
                "✗ gateway unreachable, reconnecting (attempt {failures}; data below is stale): {error}"
            ))
            .fg(Color::Red)
            .bold(),
        ),
    }
    if state.paused {
        spans.push(Span::raw("  [paused]").fg(Color::Yellow).bold());
    }
    Line::from(spans)
}

fn overview(frame: &mut Frame, area: Rect, state: &MonitorState, r: &Reading) {
    let [rps, rate, bottom] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Min(3),
        Constraint::Length(9),
    ])
    .areas(area);
    let now = |v: Option<f64>, unit: &str| v.map_or("—".to_string(), |v| format!("{v:.1}{unit}"));
    sparkline(
        frame,
        rps,
        &format!(
            "Requests/s  now {}  peak {}",
            now(state.current_rps, ""),
            state.rps.iter().max().copied().unwrap_or(0)
        ),
        state.rps.iter().copied(),
        Color::Cyan,
        None,
    );
    sparkline(
        frame,
        rate,
        &format!(
            "Block rate  now {}  since start {:.2}%",
            now(state.current_block_pct, "%"),
            r.block_rate
        ),
        state.block_pct.iter().copied(),
        Color::Red,
        Some(100),
    );
    let [totals, health, top] = Layout::horizontal([
        Constraint::Percentage(30),
        Constraint::Percentage(35),
        Constraint::Percentage(35),
    ])
    .areas(bottom);
    let lines: Vec<Line> = [
        ("requests", r.total),
        ("allowed", r.allowed),
        ("blocked", r.blocked),
        ("blocks", r.blocks.len() as u64),
    ]
    .iter()
    .map(|(name, n)| Line::from(format!("{name:<9} {n}")))
    .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("Totals")),
        totals,
    );
    frame.render_widget(
        Paragraph::new(health_lines(r)).block(Block::bordered().title("Health")),
        health,
    );
    offender_table(frame, top, r, "Top offenders");
}

fn health_lines(r: &Reading) -> Vec<Line<'static>> {
    let h = &r.health;
    let store = match &h.not_ready {
        None => Span::raw("store ready").fg(Color::Green),
        Some(why) => Span::raw(format!("NOT READY: {why}")).fg(Color::Red).bold(),
    };
    let mut reloads = Span::raw(format!(
        "reloads {} ok, {} failed",
        h.reloads_ok, h.reloads_failed
    ));
    if h.reloads_failed > 0 {
        reloads = reloads.fg(Color::Yellow);
    }
    let warn_if = |n: u64, text: String| {
        let span = Span::raw(text);
        if n > 0 { span.fg(Color::Yellow) } else { span }
    };
    vec![
        Line::from(store),
        Line::from(warn_if(
            h.store_errors,
            format!("store errors {}", h.store_errors),
        )),
        Line::from(reloads),
        Line::from(warn_if(
            h.violation_events_dropped + h.webhook_dropped,
            format!(
                "events dropped {} queue, {} webhook",
                h.violation_events_dropped, h.webhook_dropped
            ),
        )),
        Line::from(warn_if(
            h.webhook_failed,
            format!("webhook failed {}", h.webhook_failed),
        )),
    ]
}

fn sparkline(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    data: impl DoubleEndedIterator<Item = u64> + ExactSizeIterator,
    color: Color,
    max: Option<u64>,
) {
    // The newest points that fit, right-aligned like a scrolling chart.
    let width = area.width.saturating_sub(2) as usize;
    let skip = data.len().saturating_sub(width);
    let points: Vec<u64> = data.skip(skip).collect();
    let mut widget = Sparkline::default()
        .block(Block::bordered().title(title.to_string()))
        .data(points)
        .style(Style::new().fg(color));
    if let Some(max) = max {
        widget = widget.max(max);
    }
    frame.render_widget(widget, area);
}

fn header(names: &[&'static str]) -> Row<'static> {
    Row::new(names.iter().map(|n| Cell::from(*n))).bold()
}

fn traffic(frame: &mut Frame, area: Rect, r: &Reading) {
    let [routes, rules] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let none = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let rows = r.routes.iter().map(|row| {
        Row::new(vec![
            none(&row.route),
            none(&row.rule),
            row.allowed.to_string(),
            row.rate_limited.to_string(),
            row.blocked.to_string(),
        ])
    });
    let widths = [
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header(&["route", "rule", "allowed", "limited", "blocked"]))
            .block(Block::bordered().title("Routes (requests by route and rule)")),
        routes,
    );
    let rows = r.rules.iter().map(|row| {
        Row::new(vec![
            row.name.clone(),
            row.allowed.to_string(),
            row.blocked.to_string(),
            row.shadow.to_string(),
        ])
    });
    let widths = [
        Constraint::Fill(2),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header(&["rule", "allowed", "blocked", "shadow"]))
            .block(Block::bordered().title("Rules")),
        rules,
    );
}

fn offender_table(frame: &mut Frame, area: Rect, r: &Reading, title: &str) {
    let rows = r
        .offenders
        .iter()
        .map(|o| Row::new(vec![o.identity.clone(), o.violations.to_string()]));
    frame.render_widget(
        Table::new(rows, [Constraint::Fill(1), Constraint::Length(10)])
            .header(header(&["identity", "violations"]))
            .block(Block::bordered().title(title.to_string())),
        area,
    );
}

fn offenders(frame: &mut Frame, area: Rect, r: &Reading) {
    let [top, recent] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(area);
    offender_table(frame, top, r, "Top offenders");
    let rows = r.violations.iter().map(|v| {
        Row::new(vec![
            clock(v.time),
            v.identity.clone(),
            v.rule.clone(),
            format!("{}/{}", v.requests_made, v.limit),
            if v.shadow { "yes" } else { "" }.to_string(),
        ])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Length(6),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header(&["UTC", "identity", "rule", "made/lim", "shadow"]))
            .block(Block::bordered().title("Recent violations")),
        recent,
    );
}

fn blocks(frame: &mut Frame, area: Rect, r: &Reading) {
    let rows = r.blocks.iter().map(|b| {
        Row::new(vec![
            b.identity.clone(),
            b.reason.clone(),
            if b.rule.is_empty() {
                "-".into()
            } else {
                b.rule.clone()
            },
            human_duration(b.seconds_left),
        ])
    });
    let widths = [
        Constraint::Fill(2),
        Constraint::Length(10),
        Constraint::Fill(1),
        Constraint::Length(12),
    ];
    let title = format!("Active blocks ({})", r.blocks.len());
    frame.render_widget(
        Table::new(rows, widths)
            .header(header(&["identity", "reason", "rule", "time left"]))
            .block(Block::bordered().title(title)),
        area,
    );
}

/// `HH:MM:SS` (UTC) of a Unix time.
fn clock(unix: f64) -> String {
    let s = unix.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The text of a drawn buffer, one line per row, trailing blanks trimmed.
pub fn to_text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            if let Some(cell) = buffer.cell((x, y)) {
                line.push_str(cell.symbol());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
