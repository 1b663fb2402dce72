//! `pidcap lookup PROTO LOCAL REMOTE`: who owns a flow. Exit 1 when nobody does.
//!
//! The arguments go to the daemon as typed; it alone judges them (`bad_argument`), so the
//! client never disagrees with the daemon about which protocols exist.

use std::io::Write;
use std::process::ExitCode;

use pidcap_proto::{LookupReply, LookupRequest, Owner, Request};

use crate::cli::LookupArgs;
use crate::client::Client;
use crate::format;

pub fn run(
    client: &mut Client,
    args: &LookupArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let request = Request::Lookup(LookupRequest {
        proto: args.proto.clone(),
        local: args.local.clone(),
        remote: args.remote.clone(),
        netns: args.netns,
    });
    let reply = client.call::<LookupReply>(&request)?;
    if args.json {
        super::write_raw(out, &reply.raw)?;
    } else {
        out.write_all(render(&reply.body).as_bytes())?;
    }
    Ok(match reply.body.owner {
        Some(_) if reply.body.found => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// The owner as key/value lines, or `no owner found` (among the caller's own processes, when
/// the daemon looked only there).
pub fn render(reply: &LookupReply) -> String {
    match (&reply.owner, reply.found, reply.filtered_to_uid) {
        (Some(owner), true, _) => render_owner(owner),
        (_, _, Some(uid)) => format!(
            "no owner found among your processes (uid {uid}); root and members of the socket's \
             group can look up every process's flows\n"
        ),
        _ => "no owner found\n".into(),
    }
}

fn render_owner(owner: &Owner) -> String {
    let holders: Vec<String> = owner.holders.iter().map(u32::to_string).collect();
    format::key_values(&[
        ("pid", owner.pid.to_string()),
        ("comm", owner.comm.clone()),
        ("start_time", owner.start_time.to_string()),
        ("inode", owner.inode.to_string()),
        ("matched", owner.matched.clone()),
        ("holders", holders.join(" ")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_listed() {
        let reply = LookupReply::found(Owner {
            pid: 42,
            start_time: 9,
            comm: "nginx".into(),
            inode: 777,
            matched: "wildcard".into(),
            holders: vec![42, 43],
        });
        assert_eq!(
            render(&reply),
            "pid         42\n\
             comm        nginx\n\
             start_time  9\n\
             inode       777\n\
             matched     wildcard\n\
             holders     42 43\n"
        );
    }

    #[test]
    fn not_found_says_so() {
        assert_eq!(render(&LookupReply::not_found()), "no owner found\n");
        let own = LookupReply {
            filtered_to_uid: Some(1000),
            ..LookupReply::not_found()
        };
        assert!(render(&own).starts_with("no owner found among your processes (uid 1000)"));
    }
}
