//! Seeds a benchmark dataset into a fresh hoglet database, fast.
//!
//! The database is first opened through `hoglet::store::connect`, which applies hoglet's own
//! migrations; then rows are bulk-inserted with raw SQL in big transactions (SQLite: prepared
//! INSERTs in one transaction; Postgres: multi-row `INSERT … SELECT FROM unnest(…)` batches).
//!
//! Shape (realistic enough that `@me` renders a full body):
//! * organizations of 10 users each, every organization with two teams ("Default project" with
//!   its default dashboard, and "Staging"); the first user of each organization owns it;
//! * every user is a member of their organization (current organization and team set); one user
//!   in ten is also a member of the next organization, so their `organizations` lists two;
//! * user 1 is staff and holds the staff key (`user:read`), used by the list scenarios;
//! * `--keys` personal API keys (`user:read`, `user:write`) on users 2, 3, …, stored as
//!   `sha256$<hex>` exactly as hoglet stores them;
//! * every user has the same password (`--password`), hashed once with hoglet's Argon2id.
//!
//! Writes `<out>/keys.txt` (one key value per line), `<out>/staff_key.txt` and `<out>/seed.env`
//! (what the runner needs to build requests: user count, email pattern, password).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use hoglet::config::DatabaseUrl;
use hoglet::domain::{api_key, password};
use uuid::Uuid;

/// Users per organization.
const ORG_SIZE: i64 = 10;
/// Teams per organization.
const TEAMS_PER_ORG: i64 = 2;
/// Rows per Postgres batch.
const PG_BATCH: usize = 20_000;

#[derive(Debug, Parser)]
#[command(about = "Seed a hoglet database for benchmarks")]
struct Args {
    /// sqlite://FILE or postgres://USER@HOST:PORT/DB (must be empty: freshly created).
    #[arg(long, env = "HOGLET_DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 10_000)]
    users: i64,
    #[arg(long, default_value_t = 1_000)]
    keys: i64,
    /// Password of every seeded user.
    #[arg(long, default_value = "bench-password-1")]
    password: String,
    /// Directory for keys.txt, staff_key.txt and seed.env.
    #[arg(long)]
    out: PathBuf,
}

/// Email of user `id` (1-based).
fn email(id: i64) -> String {
    format!("bench{id}@example.com")
}

struct Org {
    id: String,
    name: String,
    slug: String,
}

struct Team {
    id: i64,
    uuid: String,
    org: String,
    api_token: String,
    name: &'static str,
}

struct User {
    id: i64,
    uuid: String,
    email: String,
    distinct_id: String,
    is_staff: bool,
    org: String,
    team: i64,
}

struct Membership {
    id: String,
    org: String,
    user: i64,
    level: i64,
}

struct Key {
    id: String,
    user: i64,
    label: String,
    secure_value: String,
    mask: String,
    scopes: String,
}

/// Everything to insert, generated up front (1M users is a few hundred MB: fine for a bench box).
struct Dataset {
    orgs: Vec<Org>,
    teams: Vec<Team>,
    users: Vec<User>,
    memberships: Vec<Membership>,
    keys: Vec<Key>,
    key_values: Vec<String>,
    staff_key: String,
}

fn new_key(user: i64, label: String, scopes: &[&str]) -> anyhow::Result<(Key, String)> {
    let value = api_key::generate_value();
    let key = Key {
        id: api_key::generate_id(),
        user,
        label,
        secure_value: api_key::secure_value(&value),
        mask: api_key::mask(&value),
        scopes: serde_json::to_string(scopes)?,
    };
    Ok((key, value))
}

fn generate(users: i64, keys: i64) -> anyhow::Result<Dataset> {
    let org_count = (users + ORG_SIZE - 1) / ORG_SIZE;
    let orgs: Vec<Org> = (0..org_count)
        .map(|o| Org {
            id: Uuid::now_v7().to_string(),
            name: format!("Bench Org {o}"),
            slug: format!("bench-org-{o}"),
        })
        .collect();
    let mut teams = Vec::with_capacity((org_count * TEAMS_PER_ORG) as usize);
    for (o, org) in orgs.iter().enumerate() {
        for (t, name) in ["Default project", "Staging"].into_iter().enumerate() {
            teams.push(Team {
                id: o as i64 * TEAMS_PER_ORG + t as i64 + 1,
                uuid: Uuid::now_v7().to_string(),
                org: org.id.clone(),
                api_token: format!("phc_{}", hoglet::crypto::random_token(35)),
                name,
            });
        }
    }
    let mut user_rows = Vec::with_capacity(users as usize);
    let mut memberships = Vec::with_capacity(users as usize + users as usize / 10);
    for id in 1..=users {
        let o = (id - 1) / ORG_SIZE;
        let org = &orgs[o as usize];
        user_rows.push(User {
            id,
            uuid: Uuid::now_v7().to_string(),
            email: email(id),
            distinct_id: hoglet::crypto::random_token(32),
            is_staff: id == 1,
            org: org.id.clone(),
            team: o * TEAMS_PER_ORG + 1,
        });
        memberships.push(Membership {
            id: Uuid::now_v7().to_string(),
            org: org.id.clone(),
            user: id,
            level: if (id - 1) % ORG_SIZE == 0 { 15 } else { 1 },
        });
        if (id - 1) % ORG_SIZE == 5 && org_count > 1 {
            memberships.push(Membership {
                id: Uuid::now_v7().to_string(),
                org: orgs[((o + 1) % org_count) as usize].id.clone(),
                user: id,
                level: 1,
            });
        }
    }
    let mut key_rows = Vec::with_capacity(keys as usize + 1);
    let mut key_values = Vec::with_capacity(keys as usize);
    let (staff, staff_key) = new_key(1, "bench staff".into(), &["user:read"])?;
    key_rows.push(staff);
    // Keys go to users 2, 3, …; past the last user they wrap (at most 10 keys per user).
    let holders = (users - 1).max(1);
    if keys > holders * (api_key::MAX_KEYS_PER_USER as i64 - 1) {
        bail!("{keys} keys do not fit on {users} users");
    }
    for n in 0..keys {
        let user = if users > 1 { 2 + n % holders } else { 1 };
        let (key, value) = new_key(user, format!("bench {n}"), &["user:read", "user:write"])?;
        key_rows.push(key);
        key_values.push(value);
    }
    Ok(Dataset {
        orgs,
        teams,
        users: user_rows,
        memberships,
        keys: key_rows,
        key_values,
        staff_key,
    })
}

fn seed_sqlite(path: &std::path::Path, data: &Dataset, hash: &str, now: i64) -> anyhow::Result<()> {
    use rusqlite::params;
    let mut conn = rusqlite::Connection::open(path)?;
    // Bulk-load settings for this connection only; the file stays in WAL mode.
    conn.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA cache_size = -262144; PRAGMA temp_store = MEMORY;",
    )?;
    let existing: i64 = conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    if existing > 0 {
        bail!("the database already holds {existing} users: seed a fresh one");
    }
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO organizations (id, name, slug, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )?;
        for o in &data.orgs {
            stmt.execute(params![o.id, o.name, o.slug, now])?;
        }
        let mut stmt = tx.prepare(
            "INSERT INTO teams (id, uuid, organization_id, api_token, name, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut dash = tx.prepare(
            "INSERT INTO dashboards (team_id, name, created_at) VALUES (?1, 'My App Dashboard', ?2)",
        )?;
        for t in &data.teams {
            stmt.execute(params![t.id, t.uuid, t.org, t.api_token, t.name, now])?;
            if t.id % TEAMS_PER_ORG == 1 {
                dash.execute(params![t.id, now])?;
            }
        }
        let mut stmt = tx.prepare(
            "INSERT INTO users (id, uuid, email, email_lower, password, first_name, last_name, \
             distinct_id, is_staff, date_joined, current_organization_id, current_team_id) \
             VALUES (?1, ?2, ?3, ?3, ?4, 'Bench', ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for u in &data.users {
            stmt.execute(params![
                u.id,
                u.uuid,
                u.email,
                hash,
                format!("User {}", u.id),
                u.distinct_id,
                u.is_staff,
                now,
                u.org,
                u.team
            ])?;
        }
        let mut stmt = tx.prepare(
            "INSERT INTO organization_memberships (id, organization_id, user_id, level, invited, \
             joined_at, updated_at) VALUES (?1, ?2, ?3, ?4, FALSE, ?5, ?5)",
        )?;
        for m in &data.memberships {
            stmt.execute(params![m.id, m.org, m.user, m.level, now])?;
        }
        let mut stmt = tx.prepare(
            "INSERT INTO personal_api_keys (id, user_id, label, secure_value, mask_value, \
             created_at, scopes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for k in &data.keys {
            stmt.execute(params![
                k.id,
                k.user,
                k.label,
                k.secure_value,
                k.mask,
                now,
                k.scopes
            ])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

async fn seed_postgres(url: &str, data: &Dataset, hash: &str, now: i64) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to Postgres")?;
    let conn_task = tokio::spawn(connection);
    let existing: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await?
        .get(0);
    if existing > 0 {
        bail!("the database already holds {existing} users: seed a fresh one");
    }
    let tx = client.transaction().await?;
    for chunk in data.orgs.chunks(PG_BATCH) {
        let ids: Vec<&str> = chunk.iter().map(|o| o.id.as_str()).collect();
        let names: Vec<&str> = chunk.iter().map(|o| o.name.as_str()).collect();
        let slugs: Vec<&str> = chunk.iter().map(|o| o.slug.as_str()).collect();
        tx.execute(
            "INSERT INTO organizations (id, name, slug, created_at, updated_at) \
             SELECT i, n, s, $4, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(i, n, s)",
            &[&ids, &names, &slugs, &now],
        )
        .await?;
    }
    for chunk in data.teams.chunks(PG_BATCH) {
        let ids: Vec<i64> = chunk.iter().map(|t| t.id).collect();
        let uuids: Vec<&str> = chunk.iter().map(|t| t.uuid.as_str()).collect();
        let orgs: Vec<&str> = chunk.iter().map(|t| t.org.as_str()).collect();
        let tokens: Vec<&str> = chunk.iter().map(|t| t.api_token.as_str()).collect();
        let names: Vec<&str> = chunk.iter().map(|t| t.name).collect();
        tx.execute(
            "INSERT INTO teams (id, uuid, organization_id, api_token, name, created_at) \
             SELECT i, u, o, a, n, $6 \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             AS t(i, u, o, a, n)",
            &[&ids, &uuids, &orgs, &tokens, &names, &now],
        )
        .await?;
        let defaults: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| id % TEAMS_PER_ORG == 1)
            .collect();
        tx.execute(
            "INSERT INTO dashboards (team_id, name, created_at) \
             SELECT t, 'My App Dashboard', $2 FROM unnest($1::bigint[]) AS x(t)",
            &[&defaults, &now],
        )
        .await?;
    }
    for chunk in data.users.chunks(PG_BATCH) {
        let ids: Vec<i64> = chunk.iter().map(|u| u.id).collect();
        let uuids: Vec<&str> = chunk.iter().map(|u| u.uuid.as_str()).collect();
        let emails: Vec<&str> = chunk.iter().map(|u| u.email.as_str()).collect();
        let last: Vec<String> = chunk.iter().map(|u| format!("User {}", u.id)).collect();
        let distinct: Vec<&str> = chunk.iter().map(|u| u.distinct_id.as_str()).collect();
        let staff: Vec<bool> = chunk.iter().map(|u| u.is_staff).collect();
        let orgs: Vec<&str> = chunk.iter().map(|u| u.org.as_str()).collect();
        let teams: Vec<i64> = chunk.iter().map(|u| u.team).collect();
        tx.execute(
            "INSERT INTO users (id, uuid, email, email_lower, password, first_name, last_name, \
             distinct_id, is_staff, date_joined, current_organization_id, current_team_id) \
             SELECT i, u, e, e, $9, 'Bench', l, d, s, $10, o, t \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::bool[], $7::text[], $8::bigint[]) AS x(i, u, e, l, d, s, o, t)",
            &[
                &ids, &uuids, &emails, &last, &distinct, &staff, &orgs, &teams, &hash, &now,
            ],
        )
        .await?;
    }
    for chunk in data.memberships.chunks(PG_BATCH) {
        let ids: Vec<&str> = chunk.iter().map(|m| m.id.as_str()).collect();
        let orgs: Vec<&str> = chunk.iter().map(|m| m.org.as_str()).collect();
        let users: Vec<i64> = chunk.iter().map(|m| m.user).collect();
        let levels: Vec<i64> = chunk.iter().map(|m| m.level).collect();
        tx.execute(
            "INSERT INTO organization_memberships (id, organization_id, user_id, level, invited, \
             joined_at, updated_at) SELECT i, o, u, l, FALSE, $5, $5 \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS x(i, o, u, l)",
            &[&ids, &orgs, &users, &levels, &now],
        )
        .await?;
    }
    for chunk in data.keys.chunks(PG_BATCH) {
        let ids: Vec<&str> = chunk.iter().map(|k| k.id.as_str()).collect();
        let users: Vec<i64> = chunk.iter().map(|k| k.user).collect();
        let labels: Vec<&str> = chunk.iter().map(|k| k.label.as_str()).collect();
        let secure: Vec<&str> = chunk.iter().map(|k| k.secure_value.as_str()).collect();
        let masks: Vec<&str> = chunk.iter().map(|k| k.mask.as_str()).collect();
        let scopes: Vec<&str> = chunk.iter().map(|k| k.scopes.as_str()).collect();
        tx.execute(
            "INSERT INTO personal_api_keys (id, user_id, label, secure_value, mask_value, \
             created_at, scopes) SELECT i, u, l, s, m, $7, sc \
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
             $6::text[]) AS x(i, u, l, s, m, sc)",
            &[&ids, &users, &labels, &secure, &masks, &scopes, &now],
        )
        .await?;
    }
    // Explicit ids were inserted into identity columns: move their sequences past them.
    for table in ["users", "teams", "dashboards"] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 (SELECT max(id) FROM {table}))"
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    // The steady state a long-running database reaches through autovacuum: statistics and a
    // visibility map, so plans are those production would get.
    client.batch_execute("VACUUM ANALYZE").await?;
    drop(client);
    conn_task.abort();
    Ok(())
}

fn write_outputs(args: &Args, data: &Dataset) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let mut keys = std::io::BufWriter::new(std::fs::File::create(args.out.join("keys.txt"))?);
    for value in &data.key_values {
        writeln!(keys, "{value}")?;
    }
    keys.flush()?;
    std::fs::write(
        args.out.join("staff_key.txt"),
        format!("{}\n", data.staff_key),
    )?;
    std::fs::write(
        args.out.join("seed.env"),
        format!(
            "SEED_USERS={}\nSEED_KEYS={}\nSEED_EMAIL_PREFIX=bench\nSEED_EMAIL_DOMAIN=example.com\n\
             SEED_PASSWORD={}\n",
            args.users, args.keys, args.password
        ),
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.users < 1 {
        bail!("--users must be at least 1");
    }
    let url = DatabaseUrl::parse(&args.database_url)?;
    let started = Instant::now();
    // hoglet's own migrations create the schema; the store is closed before the bulk load.
    drop(hoglet::store::connect(&url).await?);
    let plain = args.password.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&plain)).await??;
    let data = tokio::task::spawn_blocking({
        let (users, keys) = (args.users, args.keys);
        move || generate(users, keys)
    })
    .await??;
    let generated = started.elapsed();
    let now = hoglet::time::system_now();
    let data = match &url {
        DatabaseUrl::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || seed_sqlite(&path, &data, &hash, now).map(|_| data))
                .await??
        }
        DatabaseUrl::Postgres(pg) => {
            seed_postgres(pg, &data, &hash, now).await?;
            data
        }
    };
    write_outputs(&args, &data)?;
    println!(
        "{}",
        serde_json::json!({
            "users": args.users,
            "organizations": data.orgs.len(),
            "teams": data.teams.len(),
            "memberships": data.memberships.len(),
            "keys": data.keys.len(),
            "generate_seconds": generated.as_secs_f64(),
            "total_seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
