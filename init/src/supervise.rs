//! PID 1's loop: start the Pod's containers, reap every child, restart per
//! the Pod's `restartPolicy` with the kubelet's back-off, and stop them all
//! on a shutdown signal.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use i2kit_pod::backoff::Backoff;
use i2kit_pod::{PodSpec, RestartPolicy};

use crate::container::{self, Prepared};
use crate::log;
use crate::sys::{self, Exit};

/// Signals that stop the Pod: SIGTERM (`kill 1`), SIGINT (ctrl-alt-del),
/// SIGPWR (the power button watcher), SIGUSR1/SIGUSR2 (busybox halt/poweroff).
pub const SHUTDOWN_SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

enum State {
    Running { pid: libc::pid_t, since: Instant },
    Waiting { until: Instant },
    Done,
}

struct Slot {
    name: String,
    prepared: Option<Prepared>,
    state: State,
    backoff: Backoff,
    restarts: u32,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn signal_name(s: u32) -> &'static str {
    match s as libc::c_int {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "ctrl-alt-del",
        libc::SIGPWR => "power button",
        libc::SIGUSR1 => "SIGUSR1 (halt)",
        libc::SIGUSR2 => "SIGUSR2 (poweroff)",
        _ => "signal",
    }
}

struct Pod {
    slots: Vec<Slot>,
    policy: RestartPolicy,
    /// Shutting down: nothing restarts.
    stopping: bool,
}

impl Pod {
    fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some(p) = &slot.prepared else {
            slot.state = State::Done;
            return;
        };
        match container::spawn(p) {
            Ok((pid, out)) => {
                let name = slot.name.clone();
                std::thread::spawn(move || crate::log::forward(name, out));
                log!("container {} started (pid {pid})", slot.name);
                slot.state = State::Running {
                    pid,
                    since: Instant::now(),
                };
            }
            Err(e) => {
                log!("container {}: cannot start: {e}", slot.name);
                // Kubernetes counts a failed start as an exit (StartError, 128).
                self.exited(i, Exit::Code(128), Duration::ZERO);
            }
        }
    }

    fn exited(&mut self, i: usize, exit: Exit, ran: Duration) {
        let policy = self.policy;
        let slot = &mut self.slots[i];
        let how = match exit {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("was killed by signal {s}"),
        };
        if self.stopping {
            log!("container {} stopped: {how} after {}", slot.name, secs(ran));
            slot.state = State::Done;
        } else if policy.restarts(exit.code() == 0) {
            let delay = slot.backoff.next_delay(ran);
            slot.restarts += 1;
            log!(
                "container {} {how} after {}; restart {} in {} (restartPolicy {policy:?})",
                slot.name,
                secs(ran),
                slot.restarts,
                secs(delay)
            );
            slot.state = State::Waiting {
                until: Instant::now() + delay,
            };
        } else {
            log!(
                "container {} {how} after {}; not restarted (restartPolicy {policy:?})",
                slot.name,
                secs(ran)
            );
            slot.state = State::Done;
        }
    }

    /// Reap every exited child; containers among them are handled.
    fn reap(&mut self) {
        while let Some((pid, exit)) = sys::reap() {
            let found = self
                .slots
                .iter()
                .position(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid));
            if let Some(i) = found {
                let State::Running { since, .. } = self.slots[i].state else {
                    unreachable!()
                };
                self.exited(i, exit, since.elapsed());
            }
        }
    }

    fn running(&self) -> Vec<(usize, libc::pid_t)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                State::Running { pid, .. } => Some((i, pid)),
                _ => None,
            })
            .collect()
    }
}

/// Run the Pod until a shutdown signal or, under Never/OnFailure, until every
/// container has ended. Returns why the VM powers off.
pub fn run(spec: &PodSpec, signals: &OwnedFd) -> String {
    let mut pod = Pod {
        policy: spec.restart_policy,
        stopping: false,
        slots: spec
            .containers
            .iter()
            .map(|c| {
                let prepared = match container::prepare(c) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        log!("container {}: cannot prepare: {e}", c.name);
                        None
                    }
                };
                Slot {
                    name: c.name.clone(),
                    prepared,
                    state: State::Done,
                    backoff: Backoff::default(),
                    restarts: 0,
                }
            })
            .collect(),
    };
    for i in 0..pod.slots.len() {
        pod.start(i);
    }
    loop {
        let mut next: Option<Instant> = None;
        let mut live = false;
        for s in &pod.slots {
            match s.state {
                State::Running { .. } => live = true,
                State::Waiting { until } => {
                    live = true;
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
                State::Done => {}
            }
        }
        if !live {
            return "every container has ended".into();
        }
        sys::wait_readable(
            signals,
            next.map(|n| n.saturating_duration_since(Instant::now())),
        );
        for sig in sys::read_signals(signals) {
            if SHUTDOWN_SIGNALS.contains(&(sig as libc::c_int)) {
                return stop(
                    &mut pod,
                    signals,
                    spec.termination_grace_period_seconds,
                    signal_name(sig),
                );
            }
        }
        pod.reap();
        let now = Instant::now();
        for i in 0..pod.slots.len() {
            if matches!(pod.slots[i].state, State::Waiting { until } if until <= now) {
                log!("container {}: restarting", pod.slots[i].name);
                pod.start(i);
            }
        }
    }
}

/// SIGTERM every container, wait out the grace period, SIGKILL the rest.
fn stop(pod: &mut Pod, signals: &OwnedFd, grace_secs: u64, why: &str) -> String {
    pod.stopping = true;
    for s in &mut pod.slots {
        if matches!(s.state, State::Waiting { .. }) {
            s.state = State::Done;
        }
    }
    let running = pod.running();
    log!(
        "shutdown ({why}): SIGTERM to {} container(s), grace period {grace_secs}s",
        running.len()
    );
    for (_, pid) in &running {
        sys::kill(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(grace_secs);
    while !pod.running().is_empty() && Instant::now() < deadline {
        sys::wait_readable(
            signals,
            Some(deadline.saturating_duration_since(Instant::now())),
        );
        sys::read_signals(signals);
        pod.reap();
    }
    let left = pod.running();
    if !left.is_empty() {
        let names: Vec<&str> = left
            .iter()
            .map(|(i, _)| pod.slots[*i].name.as_str())
            .collect();
        log!("grace period over: SIGKILL to {}", names.join(", "));
        for (_, pid) in &left {
            sys::kill(*pid, libc::SIGKILL);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while !pod.running().is_empty() && Instant::now() < until {
            sys::wait_readable(signals, Some(Duration::from_millis(100)));
            sys::read_signals(signals);
            pod.reap();
        }
    }
    format!("shutdown ({why})")
}
