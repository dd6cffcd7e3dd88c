//! `ratethrottle monitor`: the live dashboard of a running gateway, on the
//! terminal (crossterm), polling its admin API. The terminal is restored on
//! every way out: quit, error, and panic (ratatui's hook).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::admin_client::{AdminClient, block_on};
use super::monitor::{self, Key, MonitorState, Source};
use super::{Cli, Io};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The gateway's admin API [default: the config's admin.listen]
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// Time between polls
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Print one screen as text and exit (no terminal needed)
    #[arg(long)]
    once: bool,
    /// Width of the --once screen
    #[arg(long, default_value_t = 100, requires = "once")]
    width: u16,
    /// Height of the --once screen
    #[arg(long, default_value_t = 30, requires = "once")]
    height: u16,
    /// The admin token; prefer the environment variable, which `ps` does not show
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RATETHROTTLE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 500ms, 1s, 2m)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("expected a duration from 100ms to 1h".into());
    }
    Ok(d)
}

pub fn run(cli: &Cli, args: &MonitorArgs, io: &mut Io<'_>) -> anyhow::Result<u8> {
    let Some(client) =
        AdminClient::from_command_line(cli, args.admin.as_deref(), args.token.clone(), io)?
    else {
        return Ok(1);
    };
    let source = Source::from_client(client);
    let mut state = MonitorState::new(source.url());
    if args.once {
        let reading = block_on(async { Ok(source.read().await) })?;
        state.apply(Duration::ZERO, reading);
        write!(
            io.out,
            "{}",
            monitor::screen_text(&state, args.width.max(1), args.height.max(1))
        )?;
        return Ok(if matches!(state.link, monitor::Link::Up) {
            0
        } else {
            1
        });
    }
    if !std::io::stdout().is_terminal() {
        bail!(
            "monitor draws on a terminal and stdout is not one; use `ratethrottle stats` or `monitor --once`"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Restores on return and on error, also when setting up fails halfway
    // (raw mode on, alternate screen not); ratatui::try_init's hook covers panics.
    let _restore = RestoreOnDrop;
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let started = Instant::now();
    let mut next_poll = Instant::now();
    loop {
        if !state.paused && Instant::now() >= next_poll {
            let reading = runtime.block_on(source.read());
            state.apply(started.elapsed(), reading);
            next_poll = Instant::now() + args.interval;
        }
        terminal
            .draw(|frame| monitor::render::render(frame, &state))
            .context("drawing")?;
        let wait = next_poll
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(20), Duration::from_millis(250));
        if event::poll(wait).context("reading the terminal")?
            && let Event::Key(key) = event::read().context("reading the terminal")?
            && key.kind == KeyEventKind::Press
            && let Some(key) = map_key(key.code, key.modifiers)
            && state.key(key)
        {
            return Ok(0);
        }
    }
}

struct RestoreOnDrop;

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn map_key(code: KeyCode, modifiers: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c.to_ascii_lowercase()),
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::Esc => Key::Esc,
        _ => return None,
    })
}
