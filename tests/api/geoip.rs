//! Login sessions' locations from a GeoIP database: a tiny MaxMind DB file written here (the
//! format is a binary trie of address bits, a data section and a metadata map) stands in for a
//! GeoLite2 or DB-IP City database.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

use crate::db_tests;
use crate::helpers::{Db, PASSWORD, Reply, spawn_app_with};

db_tests!(sessions_show_where_they_signed_in_from);

/// A value of the MaxMind DB data format (the types this fixture needs).
enum V<'a> {
    Str(&'a str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'a str, V<'a>)>),
    Array(Vec<V<'a>>),
}

fn encode(value: &V<'_>, out: &mut Vec<u8>) {
    fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
        assert!(size < 29, "the fixture needs no long values");
        if kind <= 7 {
            out.push((kind << 5) | size as u8);
        } else {
            out.push(size as u8);
            out.push(kind - 7);
        }
    }
    match value {
        V::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        V::U16(n) => {
            control(out, 5, 2);
            out.extend_from_slice(&n.to_be_bytes());
        }
        V::U32(n) => {
            control(out, 6, 4);
            out.extend_from_slice(&n.to_be_bytes());
        }
        V::U64(n) => {
            control(out, 9, 8);
            out.extend_from_slice(&n.to_be_bytes());
        }
        V::Map(entries) => {
            control(out, 7, entries.len());
            for (key, value) in entries {
                encode(&V::Str(key), out);
                encode(value, out);
            }
        }
        V::Array(items) => {
            control(out, 11, items.len());
            for item in items {
                encode(item, out);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Record {
    Node(usize),
    Empty,
    Data(usize),
}

/// Writes an IPv4 database (24-bit records) mapping each network to its record.
fn write_database(file: &Path, database_type: &str, networks: &[(Ipv4Addr, u8, V<'_>)]) {
    let mut data = Vec::new();
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    for (address, prefix, value) in networks {
        let offset = data.len();
        encode(value, &mut data);
        let bits = u32::from(*address);
        let mut node = 0;
        for i in 0..*prefix {
            let bit = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == *prefix {
                nodes[node][bit] = Record::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Record::Node(next) => next,
                    _ => {
                        nodes.push([Record::Empty; 2]);
                        let next = nodes.len() - 1;
                        nodes[node][bit] = Record::Node(next);
                        next
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for record in node {
            let value = match *record {
                Record::Node(n) => n,
                Record::Empty => count,
                Record::Data(offset) => count + 16 + offset,
            } as u32;
            out.extend_from_slice(&value.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    encode(
        &V::Map(vec![
            ("binary_format_major_version", V::U16(2)),
            ("binary_format_minor_version", V::U16(0)),
            ("build_epoch", V::U64(1_700_000_000)),
            ("database_type", V::Str(database_type)),
            ("description", V::Map(vec![("en", V::Str("hoglet test"))])),
            ("ip_version", V::U16(4)),
            ("languages", V::Array(vec![V::Str("en")])),
            ("node_count", V::U32(count as u32)),
            ("record_size", V::U16(24)),
        ]),
        &mut out,
    );
    std::fs::write(file, out).unwrap();
}

fn names(en: &str) -> V<'_> {
    V::Map(vec![("names", V::Map(vec![("en", V::Str(en))]))])
}

fn city_database(file: &Path) {
    write_database(
        file,
        "GeoLite2-City",
        &[
            (
                Ipv4Addr::new(81, 2, 69, 0),
                24,
                V::Map(vec![
                    ("city", names("London")),
                    ("country", names("United Kingdom")),
                ]),
            ),
            (
                Ipv4Addr::new(2, 125, 160, 0),
                20,
                V::Map(vec![("country", names("Germany"))]),
            ),
        ],
    );
}

#[test]
fn the_database_places_addresses_it_knows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("city.mmdb");
    city_database(&file);
    let geoip = hoglet::geoip::GeoIp::open(&file).unwrap();
    let at = |ip: &str| geoip.locate(ip.parse().unwrap());
    assert_eq!(at("81.2.69.160").as_deref(), Some("London, United Kingdom"));
    assert_eq!(
        at("2.125.160.216").as_deref(),
        Some("Germany"),
        "no city: the country"
    );
    assert_eq!(
        at("::ffff:81.2.69.160").as_deref(),
        Some("London, United Kingdom")
    );
    assert_eq!(at("10.0.0.1"), None, "not in the database");
    assert_eq!(at("::1"), None, "IPv6 in an IPv4 database");
}

#[tokio::test]
async fn a_file_that_is_no_database_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.mmdb");
    std::fs::write(&file, b"not a database").unwrap();
    assert!(hoglet::geoip::GeoIp::open(&file).is_err());
    let missing = hoglet::geoip::GeoIp::open(&dir.path().join("missing.mmdb"));
    let error = format!("{:#}", missing.unwrap_err());
    assert!(error.contains("missing.mmdb"), "{error}");
    // The server does not start, and says which setting to fix.
    let database = crate::helpers::TestDatabase::create(Db::Sqlite).await;
    let mut config = hoglet::config::Config::new(database.url.clone());
    config.bind = "127.0.0.1:0".into();
    config.geoip_database = Some(file);
    let refused = hoglet::App::build(config).await.err().expect("no start");
    let message = format!("{refused:#}");
    assert!(message.contains("HOGLET_GEOIP_DATABASE"), "{message}");
    assert!(message.contains("broken.mmdb"), "{message}");
}

async fn sessions_show_where_they_signed_in_from(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("city.mmdb");
    city_database(&file);
    let app = spawn_app_with(db, |c| {
        c.geoip_database = Some(file.clone());
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    app.create_user("where@example.com", false).await;
    // One browser per address (a login rotates the browser's own session); the last one lists.
    let mut last = Value::Null;
    for ip in ["10.1.2.3", "2.125.160.216", "81.2.69.160"] {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap();
        let login = client
            .post(app.url("/api/login/"))
            .header("X-Forwarded-For", ip)
            .json(&json!({"email": "where@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status().as_u16(), 200);
        last = Reply::read(
            client
                .get(app.url("/api/users/@me/login_sessions/"))
                .send()
                .await
                .unwrap(),
        )
        .await
        .json;
    }
    let locations: Vec<&Value> = last
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["location"])
        .collect();
    assert_eq!(
        locations,
        [
            &json!("London, United Kingdom"),
            &json!("Germany"),
            &Value::Null
        ],
        "current first, then the newest login: {last}"
    );
    app.stop().await;
}
