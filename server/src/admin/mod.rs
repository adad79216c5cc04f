//! `shardmq admin`: RocketMQ mqadmin-like commands against a running cluster, found through
//! a NameServer. Each prints plain lines on stdout; failures go to stderr with a non-zero exit.
//! Every line goes through [`outln!`], so a reader that stops early (`| head -1`) ends the
//! command quietly instead of panicking it (see [`AdminError::StdoutClosed`]).

mod consume;
mod group;
mod send;
mod subscribe;

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use shardmq_protocol::message::{
    BrokerData, ClusterInfo, Empty, KeyValues, NameList, TopicConfigData, TopicRequest, TopicRoute,
    TopicStats, ViewMessageRequest, ViewMessageResponse,
};
use shardmq_protocol::{decode_reply, Reply, Request, Status, Wire};

use crate::config::split_addrs;
use crate::rpc::Conn;

pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Why an admin command stopped early.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The command failed; the message says why (printed on stderr, exit status 1).
    #[error("{0}")]
    Failed(String),
    /// stdout's reader went away (`shardmq admin send ... | head -1`). Rust ignores SIGPIPE,
    /// so the next write fails with EPIPE, which `println!` turns into a panic (exit 101).
    /// The command stops at that line instead (`consume` still commits what it printed) and
    /// `main` exits with status 0 and nothing on stderr: the reader has what it asked for,
    /// and a script under `set -o pipefail` should not fail because `head` stopped reading
    /// (the choice of ripgrep and most Rust CLIs, rather than the 141 of a SIGPIPE death).
    #[error("stdout was closed by its reader")]
    StdoutClosed,
}

impl From<String> for AdminError {
    fn from(e: String) -> Self {
        AdminError::Failed(e)
    }
}

/// Writes one line on stdout: [`AdminError::StdoutClosed`] when the reader is gone, a
/// failure for any other write error (a full disk behind `> file`). Restoring SIGPIPE's
/// default disposition instead would kill the process at the write, before `consume` commits
/// and before `subscribe` leaves its group, and it would need `libc`-level calls the server
/// does not otherwise make; a typed error lets each command end the way it should.
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) -> Result<(), AdminError> {
    // stdout is line buffered, so each line reaches the pipe (and meets EPIPE) here.
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{args}") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(AdminError::StdoutClosed),
        Err(e) => Err(AdminError::Failed(format!("cannot write to stdout: {e}"))),
    }
}

/// `println!` for the admin commands: `outln!("{a}\t{b}")?` (see [`write_line`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::admin::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

#[derive(Args)]
pub struct AdminArgs {
    /// NameServer addresses, `;`-separated.
    #[arg(long, env = "SHARDMQ_NAMESRV", default_value = "127.0.0.1:9876")]
    namesrv: String,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Topics: create, update, delete, list, route.
    Topic {
        #[command(subcommand)]
        cmd: TopicCmd,
    },
    /// Clusters and their brokers.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Broker counters.
    Broker {
        #[command(subcommand)]
        cmd: BrokerCmd,
    },
    /// Queue offsets of a topic.
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// Sends messages; prints message id, queue and offset per send.
    Send(send::SendArgs),
    /// Pulls messages of a topic for a group and prints them.
    Consume(consume::ConsumeArgs),
    /// Joins a consumer group with a push consumer; prints each message as a JSON line
    /// until SIGTERM or SIGINT, then leaves the group gracefully.
    Subscribe(subscribe::SubscribeArgs),
    /// Consumer groups: their live members on every broker.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Consumer offsets on the brokers.
    Offsets {
        #[command(subcommand)]
        cmd: OffsetsCmd,
    },
    /// Delayed messages: progress per level and of the exact-time wheel.
    Schedule {
        #[command(subcommand)]
        cmd: ScheduleCmd,
    },
    /// Finds a message by its broker message id, or by the unique id its producer gave it
    /// (with `--topic`: the topic's queues are scanned, a diagnostic for modest topics).
    Message {
        #[arg(long)]
        id: String,
        /// Where to look for a unique id.
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Subcommand)]
enum TopicCmd {
    Create(TopicArgs),
    Update(TopicArgs),
    Delete {
        #[arg(long)]
        topic: String,
    },
    List,
    Route {
        #[arg(long)]
        topic: String,
    },
}

#[derive(Args)]
struct TopicArgs {
    #[arg(long)]
    topic: String,
    /// Read and write queues.
    #[arg(long, default_value_t = 8)]
    queues: u32,
    #[arg(long)]
    read_queues: Option<u32>,
    #[arg(long)]
    write_queues: Option<u32>,
    /// rw, r or w.
    #[arg(long, default_value = "rw")]
    perm: String,
    /// Only this broker (default: every master of every cluster).
    #[arg(long)]
    broker: Option<String>,
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Every consumer group the brokers know (live members or committed offsets).
    List,
    /// A group's live members on each broker.
    Members {
        #[arg(long)]
        group: String,
    },
    /// Per queue of a topic: broker offset, the group's offset, lag.
    Progress {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
    },
}

#[derive(Subcommand)]
enum OffsetsCmd {
    /// Moves the group's offsets to the first message stored at or after a time.
    Reset {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// Milliseconds since the epoch.
        #[arg(long)]
        to_time: i64,
    },
}

#[derive(Subcommand)]
enum ScheduleCmd {
    Status {
        /// Only this broker (default: every master).
        #[arg(long)]
        broker: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    List,
}

#[derive(Subcommand)]
enum BrokerCmd {
    Status {
        /// Only this broker (default: every broker).
        #[arg(long)]
        broker: Option<String>,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    Offsets {
        #[arg(long)]
        topic: String,
    },
}

pub fn run(args: AdminArgs) -> Result<(), AdminError> {
    let ns = Namesrv {
        addrs: split_addrs(&args.namesrv),
    };
    match args.cmd {
        AdminCmd::Topic { cmd } => topic(&ns, cmd),
        AdminCmd::Cluster {
            cmd: ClusterCmd::List,
        } => {
            let info = ns.cluster_info()?;
            for (cluster, names) in &info.clusters {
                for name in names {
                    for b in info.brokers.iter().filter(|b| &b.broker_name == name) {
                        for (id, addr) in &b.addrs {
                            outln!("{cluster}\t{name}\t{id}\t{addr}")?;
                        }
                    }
                }
            }
            Ok(())
        }
        AdminCmd::Broker {
            cmd: BrokerCmd::Status { broker },
        } => {
            let addrs = match broker {
                Some(a) => vec![a],
                None => all_addrs(&ns.cluster_info()?, false),
            };
            for addr in addrs {
                let kv: KeyValues = call_typed(&addr, &Request::GetBrokerStatus(Empty {}))?;
                outln!("broker {addr}")?;
                for (k, v) in kv.entries {
                    outln!("  {k}\t{v}")?;
                }
            }
            Ok(())
        }
        AdminCmd::Queue {
            cmd: QueueCmd::Offsets { topic },
        } => {
            let route = ns.route(&topic)?;
            outln!("broker\tqueue\tmin\tmax")?;
            for b in &route.brokers {
                let Some(addr) = master(b) else { continue };
                let stats: TopicStats = call_typed(
                    addr,
                    &Request::GetTopicStats(TopicRequest {
                        topic: topic.clone(),
                    }),
                )?;
                for q in stats.queues {
                    outln!(
                        "{}\t{}\t{}\t{}",
                        b.broker_name,
                        q.queue_id,
                        q.min_offset,
                        q.max_offset
                    )?;
                }
            }
            Ok(())
        }
        AdminCmd::Group {
            cmd: GroupCmd::Members { group },
        } => {
            for addr in all_addrs(&ns.cluster_info()?, true) {
                let members: NameList = call_typed(
                    &addr,
                    &Request::GetConsumerList(shardmq_protocol::message::GroupRequest {
                        group: group.clone(),
                    }),
                )?;
                for m in members.names {
                    outln!("{addr}\t{group}\t{m}")?;
                }
            }
            Ok(())
        }
        AdminCmd::Group {
            cmd: GroupCmd::List,
        } => {
            let mut all = std::collections::BTreeSet::new();
            for addr in all_addrs(&ns.cluster_info()?, true) {
                let groups: NameList = call_typed(&addr, &Request::GetConsumerGroups(Empty {}))?;
                all.extend(groups.names);
            }
            for g in all {
                outln!("{g}")?;
            }
            Ok(())
        }
        AdminCmd::Group {
            cmd: GroupCmd::Progress { group, topic },
        } => group::progress(&ns, &group, &topic),
        AdminCmd::Offsets {
            cmd:
                OffsetsCmd::Reset {
                    group,
                    topic,
                    to_time,
                },
        } => group::reset(&ns, &group, &topic, to_time),
        AdminCmd::Schedule {
            cmd: ScheduleCmd::Status { broker },
        } => {
            let addrs = match broker {
                Some(a) => vec![a],
                None => all_addrs(&ns.cluster_info()?, true),
            };
            for addr in addrs {
                let kv: KeyValues = call_typed(&addr, &Request::GetScheduleStatus(Empty {}))?;
                outln!("broker {addr}")?;
                for (k, v) in kv.entries {
                    outln!("  {k}\t{v}")?;
                }
            }
            Ok(())
        }
        AdminCmd::Send(a) => send::run(&args.namesrv, a),
        AdminCmd::Consume(a) => consume::run(&ns, a),
        AdminCmd::Subscribe(a) => subscribe::run(&args.namesrv, a),
        AdminCmd::Message { id, topic } => {
            for addr in all_addrs(&ns.cluster_info()?, true) {
                let req = Request::ViewMessageById(ViewMessageRequest { id: id.clone() });
                if let Ok(v) = call_typed::<ViewMessageResponse>(&addr, &req) {
                    consume::print_message(&v.message, &addr)?;
                    return Ok(());
                }
            }
            match topic {
                Some(t) => consume::find_unique(&ns, &t, &id),
                None => Err(AdminError::Failed(format!(
                    "no broker holds a message with broker id {id}; for a producer's unique \
                     id, name its --topic"
                ))),
            }
        }
    }
}

fn topic(ns: &Namesrv, cmd: TopicCmd) -> Result<(), AdminError> {
    match cmd {
        TopicCmd::Create(a) | TopicCmd::Update(a) => {
            let perm = match a.perm.as_str() {
                "rw" | "wr" => 6,
                "r" => 4,
                "w" => 2,
                p => return Err(format!("--perm must be rw, r or w, not {p:?}").into()),
            };
            let cfg = TopicConfigData {
                topic: a.topic.clone(),
                read_queues: a.read_queues.unwrap_or(a.queues),
                write_queues: a.write_queues.unwrap_or(a.queues),
                perm,
                order: false,
            };
            let addrs = match a.broker {
                Some(b) => vec![b],
                None => all_addrs(&ns.cluster_info()?, true),
            };
            if addrs.is_empty() {
                return Err(AdminError::Failed(
                    "no broker is registered with the NameServer".into(),
                ));
            }
            for addr in &addrs {
                let _: Empty = call_typed(addr, &Request::CreateTopic(cfg.clone()))?;
                outln!(
                    "topic {} on {addr}: {} read / {} write queues",
                    cfg.topic,
                    cfg.read_queues,
                    cfg.write_queues
                )?;
            }
            // The brokers register the change at once; return when the route shows it, so
            // that a send or consume right after finds the topic.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let routed = ns
                    .route(&cfg.topic)
                    .map(|r| {
                        addrs.iter().all(|a| {
                            r.brokers
                                .iter()
                                .any(|b| b.addrs.iter().any(|(_, x)| x == a))
                        })
                    })
                    .unwrap_or(false);
                if routed {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    eprintln!(
                        "warning: the NameServer does not route topic {} yet",
                        cfg.topic
                    );
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        TopicCmd::Delete { topic } => {
            for addr in all_addrs(&ns.cluster_info()?, true) {
                let _: Empty = call_typed(
                    &addr,
                    &Request::DeleteTopic(TopicRequest {
                        topic: topic.clone(),
                    }),
                )?;
                outln!("topic {topic} deleted on {addr}")?;
            }
            Ok(())
        }
        TopicCmd::List => {
            let names: NameList = ns.call(&Request::GetTopicList(Empty {}))?;
            for n in names.names {
                outln!("{n}")?;
            }
            Ok(())
        }
        TopicCmd::Route { topic } => {
            let route = ns.route(&topic)?;
            for b in &route.brokers {
                for (id, addr) in &b.addrs {
                    outln!("broker\t{}\t{}\t{id}\t{addr}", b.cluster, b.broker_name)?;
                }
            }
            for q in &route.queues {
                outln!(
                    "queues\t{}\tread {}\twrite {}\tperm {}",
                    q.broker_name,
                    q.read_queues,
                    q.write_queues,
                    q.perm
                )?;
            }
            Ok(())
        }
    }
}

/// The NameServers given on the command line: a call goes to the first that answers.
pub(crate) struct Namesrv {
    addrs: Vec<String>,
}

impl Namesrv {
    pub(crate) fn call<T: Wire>(&self, req: &Request) -> Result<T, String> {
        let mut last = String::from("no NameServer address given");
        for addr in &self.addrs {
            match call_typed(addr, req) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub(crate) fn route(&self, topic: &str) -> Result<TopicRoute, String> {
        self.call(&Request::GetRouteByTopic(TopicRequest {
            topic: topic.to_owned(),
        }))
    }

    pub(crate) fn cluster_info(&self) -> Result<ClusterInfo, String> {
        self.call(&Request::GetClusterInfo(Empty {}))
    }
}

pub(crate) fn master(b: &BrokerData) -> Option<&str> {
    b.addrs
        .iter()
        .find(|(id, _)| *id == 0)
        .map(|(_, a)| a.as_str())
}

/// Every broker address (only masters if `masters`).
fn all_addrs(info: &ClusterInfo, masters: bool) -> Vec<String> {
    info.brokers
        .iter()
        .flat_map(|b| b.addrs.iter())
        .filter(|(id, _)| !masters || *id == 0)
        .map(|(_, a)| a.clone())
        .collect()
}

/// One call on a fresh connection; a non-success status becomes an error with its remark.
pub(crate) fn call_typed<T: Wire>(addr: &str, req: &Request) -> Result<T, String> {
    let mut conn = Conn::connect(addr, TIMEOUT).map_err(|e| e.to_string())?;
    call_on(&mut conn, req, &[]).map(|(_, v)| v)
}

/// One call on `conn`: the status and typed fields for success and the `typed` statuses.
pub(crate) fn call_on<T: Wire>(
    conn: &mut Conn,
    req: &Request,
    typed: &[Status],
) -> Result<(Status, T), String> {
    let frame = conn.call(req).map_err(|e| e.to_string())?;
    match decode_reply::<T>(&frame, typed) {
        Ok(Reply::Typed(s, v)) => Ok((s, v)),
        Ok(Reply::Error(s, remark)) => Err(format!("{} answered {s}: {remark}", conn.addr())),
        Err(e) => Err(format!("{} sent a bad response: {e}", conn.addr())),
    }
}
