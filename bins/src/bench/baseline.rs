//! The raw-ZeroMQ baseline: the same closed loop on `chat_net::baseline` (a
//! ROUTER/DEALER proxy, REP echo workers, REQ clients), with the chat cluster stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chat_net::baseline::{EchoClient, EchoService};
use chat_net::Shutdown;
use hdrhistogram::Histogram;

use super::flags::BenchArgs;
use super::load::{drive, join, merge, spawn, Control, OnDrop, Progress, STOP};
use super::report::LoadReport;

/// What the baseline measured.
pub(super) struct BaselineOutcome {
    pub(super) load: LoadReport,
    pub(super) interrupted: bool,
}

/// Runs the baseline load with the same clients, size, warm-up and duration.
pub(super) fn run_baseline(
    args: &BenchArgs,
    stop: &Shutdown,
    template: &Histogram<u64>,
    progress: &Progress,
) -> anyhow::Result<BaselineOutcome> {
    progress.say(&format!(
        "baseline: zmq::proxy ROUTER/DEALER, {} echo workers, {} REQ clients, {} B",
        args.servers, args.clients, args.size
    ));
    let service = EchoService::start(args.servers, "bench")?;
    let frontend = service.frontend().to_string();

    let ctl = Arc::new(Control::default());
    let c = ctl.clone();
    let _stop_workers = OnDrop(move || c.phase.store(STOP, Ordering::Release));
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (ctl, template, frontend) = (ctl.clone(), template.clone(), frontend.clone());
        let payload = vec![b'.'; args.size];
        clients.push(spawn(format!("bench-req-{i}"), move || {
            // Created here, so its I/O thread is named after this one.
            let mut client = EchoClient::new(&frontend);
            drive(&ctl, &template, |_, _| {
                let result = client.round_trip(&payload);
                ("echo", result.map_err(|e| e.code().to_string()))
            })
        })?);
    }
    let timing = progress.pace("baseline", &ctl, args, stop);
    let results = join(clients, "baseline client");
    drop(service);
    Ok(BaselineOutcome {
        load: merge(results?, &timing, template)?,
        interrupted: timing.interrupted,
    })
}
