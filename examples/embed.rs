//! Embedding the SDK: log in, join a channel, post, and print what arrives.
//!
//! Start a cluster first (`cargo run --release --bin chat -- up`), then:
//! `cargo run --example embed -- ana geral "olá!"`

use std::time::Duration;

use chat_net::client::{Client, ClientConfig, ClientEvent};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let user = args.next().unwrap_or_else(|| "ana".into());
    let channel = args.next().unwrap_or_else(|| "geral".into());
    let text = args.next().unwrap_or_else(|| "olá!".into());

    let client = Client::connect(ClientConfig::default())?;
    client.login(&user)?;
    if let Err(e) = client.create_channel(&channel) {
        eprintln!("{e}"); // `already_exists` is fine
    }
    client.subscribe(&channel)?;
    client.publish(&user, &channel, &text)?;
    while let Ok(event) = client.events().recv_timeout(Duration::from_secs(5)) {
        if let ClientEvent::Post(p) = event {
            println!(
                "[{}] #{} <{}> {}",
                p.timestamp, p.channel, p.user, p.message
            );
        }
    }
    Ok(())
}
