//! The test kit's fault-injecting Redis proxy against a real `redis-server`:
//! faithful pass-through (pipelines, a 1 MiB reply, nested and null values,
//! RESP3, pub/sub), each fault (a dropped reply, a delayed one, one cut by a
//! reset, black-holed connections), reproducible rates, and its stop.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::Value;
use tollgate_testkit::redis_proxy::{Fault, Match, RedisProxy, Rule};
use tollgate_testkit::redis_server::RedisServer;

/// Upper bound of every read and write of the tests' clients.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to `url`, every read and write bounded by [`IO_TIMEOUT`].
fn connect(url: &str) -> redis::Connection {
    let connection = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"));
    connection.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    connection.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    connection
}

fn get(connection: &mut redis::Connection, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
    redis::cmd("GET").arg(key).query(connection)
}

/// 1 MiB of bytes full of what RESP framing looks for.
fn big_value() -> Vec<u8> {
    b"\r\n*2\r\n$-1\r\n:7\r\n+OK"
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect()
}

fn rule(command: &str, fault: Fault) -> Rule {
    Rule::new(Match::Command(command.to_string()), fault)
}

/// A plain socket to `port`, reads and writes bounded by [`IO_TIMEOUT`].
fn socket(port: u16) -> TcpStream {
    let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A command as RESP.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut bytes = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        bytes.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    bytes
}

/// Reads until `received` holds `needle`; panics on an end, an error or a
/// timeout first.
fn read_until(stream: &mut TcpStream, received: &mut Vec<u8>, needle: &[u8]) {
    let mut chunk = [0; 4096];
    while !received
        .windows(needle.len())
        .any(|window| window == needle)
    {
        match stream.read(&mut chunk) {
            Ok(0) => panic!(
                "closed before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(received)
            ),
            Ok(read) => received.extend_from_slice(&chunk[..read]),
            Err(error) => panic!(
                "{error} before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(received)
            ),
        }
    }
}

/// Reads until the end of the stream: what came, and the error that ended
/// it (`None`: a clean close).
fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut received = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (received, None),
            Ok(read) => received.extend_from_slice(&chunk[..read]),
            Err(error) => return (received, Some(error)),
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[test]
fn passes_pipelines_large_nested_and_null_replies_through() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let mut connection = connect(&proxy.url());

    let replies: (String, i64, String, Option<String>, i64, Vec<String>) = redis::pipe()
        .cmd("SET")
        .arg("a")
        .arg("1")
        .cmd("INCR")
        .arg("a")
        .cmd("GET")
        .arg("a")
        .cmd("GET")
        .arg("missing")
        .cmd("RPUSH")
        .arg("list")
        .arg(&["x", "y", "z"])
        .cmd("LRANGE")
        .arg("list")
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .unwrap();
    assert_eq!(
        replies,
        (
            "OK".to_string(),
            2,
            "2".to_string(),
            None,
            3,
            vec!["x".to_string(), "y".to_string(), "z".to_string()]
        )
    );

    // 1 MiB each way, pipelined with small replies on both sides.
    let big = big_value();
    let (pong, set, first, second, missing): (String, String, Vec<u8>, Vec<u8>, Option<Vec<u8>>) =
        redis::pipe()
            .cmd("PING")
            .cmd("SET")
            .arg("big")
            .arg(&big)
            .cmd("GET")
            .arg("big")
            .cmd("GET")
            .arg("big")
            .cmd("GET")
            .arg("nothing")
            .query(&mut connection)
            .unwrap();
    assert_eq!((pong.as_str(), set.as_str()), ("PONG", "OK"));
    assert!(
        first == big && second == big,
        "the 1 MiB value came back changed"
    );
    assert_eq!(missing, None);

    // Nested arrays, an empty one, a null array (`*-1`) and a null bulk.
    let nested: Value = redis::cmd("EVAL")
        .arg("return {1, {2, {3, 'x'}, {}}, 'y'}")
        .arg(0)
        .query(&mut connection)
        .unwrap();
    assert_eq!(
        nested,
        Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![
                Value::Int(2),
                Value::Array(vec![Value::Int(3), Value::BulkString(b"x".to_vec())]),
                Value::Array(vec![]),
            ]),
            Value::BulkString(b"y".to_vec()),
        ])
    );
    let timed_out: Value = redis::cmd("BLPOP")
        .arg("no-list")
        .arg(0.01)
        .query(&mut connection)
        .unwrap();
    assert_eq!(timed_out, Value::Nil);
    let null: Value = redis::cmd("EVAL")
        .arg("return nil")
        .arg(0)
        .query(&mut connection)
        .unwrap();
    assert_eq!(null, Value::Nil);

    let stats = proxy.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.faults(), 0);
    assert_eq!(stats.command("GET").forwarded, 5);
    assert_eq!(stats.command("set").forwarded, 2);
    assert_eq!(stats.command("EVAL").forwarded, 2);
}

#[test]
fn passes_resp3_values_inline_commands_and_pushes_through_byte_for_byte() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let mut stream = socket(proxy.port);
    let mut received = Vec::new();

    stream.write_all(&resp(&["HELLO", "3"])).unwrap();
    read_until(&mut stream, &mut received, b"$7\r\nmodules\r\n*0\r\n");
    received.clear();

    // A pipeline of RESP3 replies (map, set, double, null), one inline.
    let mut pipeline = [
        resp(&["HSET", "h", "a", "1"]),
        resp(&["HGETALL", "h"]),
        resp(&["SADD", "s", "m"]),
        resp(&["SMEMBERS", "s"]),
        resp(&["INCRBYFLOAT", "f", "1.5"]),
        resp(&["ZADD", "z", "2.5", "m"]),
        resp(&["ZSCORE", "z", "m"]),
        resp(&["GET", "missing"]),
    ]
    .concat();
    pipeline.extend_from_slice(b"ECHO inline\r\n");
    stream.write_all(&pipeline).unwrap();
    let expected: &[u8] = b":1\r\n%1\r\n$1\r\na\r\n$1\r\n1\r\n:1\r\n~1\r\n$1\r\nm\r\n\
                           $3\r\n1.5\r\n:1\r\n,2.5\r\n_\r\n$6\r\ninline\r\n";
    read_until(&mut stream, &mut received, b"$6\r\ninline\r\n");
    assert_eq!(
        String::from_utf8_lossy(&received),
        String::from_utf8_lossy(expected)
    );
    received.clear();

    // Pushes answer no command: a rule on every command leaves them alone,
    // and falls on the next reply, PING's.
    stream.write_all(&resp(&["SUBSCRIBE", "ch"])).unwrap();
    read_until(
        &mut stream,
        &mut received,
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    proxy.set_rules(vec![Rule::new(Match::Any, Fault::DropReply)]);
    let _: i64 = redis.command(&["PUBLISH", "ch", "m1"]);
    let _: i64 = redis.command(&["PUBLISH", "ch", "m2"]);
    read_until(
        &mut stream,
        &mut received,
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nm1\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nm2\r\n",
    );
    received.clear();
    stream.write_all(&resp(&["PING"])).unwrap();
    let (after, error) = read_to_end(&mut stream);
    assert!(after.is_empty(), "PING's reply came: {after:?}");
    assert!(error.is_none(), "closed, not timed out: {error:?}");

    let stats = proxy.stats();
    assert_eq!(stats.dropped, 1);
    assert_eq!(stats.command("PING").dropped, 1);
    assert_eq!(stats.command("SUBSCRIBE").forwarded, 1);
    assert_eq!(stats.command("ECHO").forwarded, 1);
    assert_eq!(stats.command("HGETALL").forwarded, 1);
}

#[test]
fn pub_sub_over_resp2_is_never_faulted() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    proxy.set_rules(vec![
        rule("SUBSCRIBE", Fault::DropReply),
        rule("UNSUBSCRIBE", Fault::ResetMidReply),
    ]);
    let mut connection = connect(&proxy.url());
    let mut pubsub = connection.as_pubsub();
    pubsub.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    pubsub.subscribe(&["one", "two"]).unwrap();
    let _: i64 = redis.command(&["PUBLISH", "two", "hello"]);
    let message = pubsub.get_message().unwrap();
    assert_eq!(message.get_channel_name(), "two");
    assert_eq!(message.get_payload::<String>().unwrap(), "hello");
    pubsub.unsubscribe("one").unwrap();
    let _: i64 = redis.command(&["PUBLISH", "two", "again"]);
    let message = pubsub.get_message().unwrap();
    assert_eq!(message.get_payload::<String>().unwrap(), "again");

    let stats = proxy.stats();
    assert_eq!(stats.faults(), 0);
    assert_eq!(stats.command("SUBSCRIBE").forwarded, 1);
    assert_eq!(stats.command("UNSUBSCRIBE").forwarded, 1);
}

#[test]
fn a_dropped_reply_closes_the_connection_after_the_command_ran() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    proxy.set_rules(vec![rule("SET", Fault::DropReply)]);
    let mut connection = connect(&proxy.url());

    let error = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut connection)
        .unwrap_err();
    assert!(
        error.is_io_error() || error.is_connection_dropped(),
        "{error:?}"
    );
    // The command ran: the key is there, on the server itself.
    assert_eq!(
        redis.command::<Option<String>>(&["GET", "k"]).as_deref(),
        Some("v")
    );
    // The connection is gone; another one, for another command, is fine.
    assert!(redis::cmd("PING").query::<String>(&mut connection).is_err());
    let mut connection = connect(&proxy.url());
    assert_eq!(
        get(&mut connection, "k").unwrap().as_deref(),
        Some(&b"v"[..])
    );

    let stats = proxy.stats();
    assert_eq!((stats.dropped, stats.faults()), (1, 1));
    let set = stats.command("SET");
    assert_eq!((set.forwarded, set.dropped), (1, 1));
}

#[test]
fn a_delayed_reply_outlasts_a_client_timeout_and_keeps_its_place() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let _: () = redis.command(&["SET", "k", "v"]);
    let delay = Duration::from_millis(300);
    proxy.set_rules(vec![rule("GET", Fault::Delay(delay))]);

    let mut connection = connect(&proxy.url());
    connection
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let error = get(&mut connection, "k").unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());

    // Waited for, it comes after the delay, between the replies around it.
    let mut connection = connect(&proxy.url());
    let started = Instant::now();
    let replies: (String, Option<String>, i64) = redis::pipe()
        .cmd("SET")
        .arg("x")
        .arg("1")
        .cmd("GET")
        .arg("k")
        .cmd("INCR")
        .arg("n")
        .query(&mut connection)
        .unwrap();
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(replies, ("OK".to_string(), Some("v".to_string()), 1));
    assert_eq!(proxy.stats().delayed, 2);

    // At rate 0 the rule never applies.
    proxy.set_rules(vec![rule("GET", Fault::Delay(delay)).at_rate(0.0)]);
    let mut connection = connect(&proxy.url());
    connection
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            get(&mut connection, "k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
    let stats = proxy.stats();
    assert_eq!(stats.delayed, 2);
    assert_eq!(stats.command("GET").forwarded, 7);
}

#[test]
fn a_reply_reset_midway_fails_its_client_and_no_other() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let big = big_value();
    let mut direct = connect(&redis.url());
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut direct)
        .unwrap();
    let _: () = redis.command(&["SET", "small", "0123456789"]);
    proxy.set_rules(vec![rule("GET", Fault::ResetMidReply)]);

    let mut connection = connect(&proxy.url());
    let error = get(&mut connection, "big").unwrap_err();
    assert!(
        error.is_io_error() || error.is_connection_dropped(),
        "{error:?}"
    );

    // The first half of the reply's bytes, then a reset.
    let mut stream = socket(proxy.port);
    stream.write_all(&resp(&["GET", "small"])).unwrap();
    let (received, error) = read_to_end(&mut stream);
    assert_eq!(received, b"$10\r\n012", "half of $10\\r\\n0123456789\\r\\n");
    assert_eq!(
        error.map(|error| error.kind()),
        Some(ErrorKind::ConnectionReset)
    );

    // Other commands and new connections are fine.
    let mut connection = connect(&proxy.url());
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut connection).unwrap(),
        "PONG"
    );
    proxy.clear_rules();
    assert_eq!(get(&mut connection, "big").unwrap(), Some(big));

    let stats = proxy.stats();
    assert_eq!((stats.reset, stats.faults()), (2, 2));
    assert_eq!(stats.command("GET").reset, 2);
}

#[test]
fn black_holed_connections_hang_until_the_rule_goes() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let mut before = connect(&proxy.url());
    proxy.set_rules(vec![Rule::new(Match::Any, Fault::BlackHoleConnections)]);

    // A client's connection setup gets no answer.
    let started = Instant::now();
    let error = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_millis(200))
        .map(|_| ())
        .unwrap_err();
    assert!(error.is_timeout() || error.is_io_error(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Accepted, yet nothing answers.
    let mut held = socket(proxy.port);
    held.write_all(&resp(&["PING"])).unwrap();
    held.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0; 1];
    let error = held.read(&mut byte).unwrap_err();
    assert!(is_timeout(&error), "{error:?}");

    // Connections made before are not affected.
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut before).unwrap(),
        "PONG"
    );
    let stats = proxy.stats();
    assert_eq!((stats.connections, stats.black_holed), (3, 2));

    // Without the rule, the held connection is served what it asked, and
    // new connections work.
    proxy.clear_rules();
    held.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut received = Vec::new();
    read_until(&mut held, &mut received, b"+PONG\r\n");
    let mut connection = connect(&proxy.url());
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut connection).unwrap(),
        "PONG"
    );
    assert_eq!(proxy.stats().black_holed, 2);
}

/// The number of GETs of 200 that seed 42 picks at rate 0.5.
const PICKED_BY_SEED_42: u64 = 103;

#[test]
fn a_rate_picks_the_same_commands_for_the_same_seed() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let _: () = redis.command(&["SET", "k", "v"]);
    let rules = vec![rule("GET", Fault::Delay(Duration::from_millis(1))).at_rate(0.5)];

    let mut runs = Vec::new();
    for _ in 0..2 {
        proxy.set_seed(42);
        proxy.reset_stats();
        proxy.set_rules(rules.clone());
        let mut connection = connect(&proxy.url());
        for _ in 0..200 {
            assert_eq!(
                get(&mut connection, "k").unwrap().as_deref(),
                Some(&b"v"[..])
            );
            // Commands the rule does not select draw nothing.
            let _: String = redis::cmd("PING").query(&mut connection).unwrap();
        }
        let stats = proxy.stats();
        assert_eq!(stats.command("GET").forwarded, 200);
        runs.push(stats.delayed);
    }
    assert_eq!(runs[0], runs[1], "same seed, same picks");
    assert!((60..=140).contains(&runs[0]), "{runs:?}");
    assert_eq!(runs[0], PICKED_BY_SEED_42);
}

#[test]
fn dropping_the_proxy_closes_its_port_and_connections() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let port = proxy.port;
    let mut connection = connect(&proxy.url());
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut connection).unwrap(),
        "PONG"
    );
    let started = Instant::now();
    drop(proxy);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(redis::cmd("PING").query::<String>(&mut connection).is_err());
    assert!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_err()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn serves_async_clients_from_inside_another_runtime() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.port);
    let delay = Duration::from_millis(50);
    proxy.set_rules(vec![rule("GET", Fault::Delay(delay))]);
    let client = redis::Client::open(proxy.url()).unwrap();
    let bounded = Duration::from_secs(5);
    let mut connection = tokio::time::timeout(bounded, client.get_multiplexed_async_connection())
        .await
        .unwrap()
        .unwrap();

    // Concurrent commands on one multiplexed connection: each reply with
    // its own command, the delayed ones included.
    let started = Instant::now();
    let calls = (0..20).map(|index| {
        let mut connection = connection.clone();
        async move {
            let key = format!("key-{index}");
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(index)
                .query_async(&mut connection)
                .await
                .unwrap();
            let value: i64 = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .unwrap();
            assert_eq!(value, index);
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for call in calls {
        tasks.spawn(call);
    }
    tokio::time::timeout(bounded, tasks.join_all())
        .await
        .unwrap();
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    let pong: String =
        tokio::time::timeout(bounded, redis::cmd("PING").query_async(&mut connection))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(proxy.stats().delayed, 20);
    drop(proxy);
}
