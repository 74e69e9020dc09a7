//! Where an address is, from an optional MaxMind DB file (`HOGLET_GEOIP_DATABASE`): a MaxMind
//! GeoLite2/GeoIP2 or DB-IP "lite" City or Country database. Read once at start, kept in memory.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use maxminddb::{Reader, path};

pub struct GeoIp {
    reader: Reader<Vec<u8>>,
}

impl GeoIp {
    /// Opens and checks the database; a file that is not one fails here, at start.
    pub fn open(file: &Path) -> anyhow::Result<Self> {
        let reader = Reader::open_readfile(file)
            .with_context(|| format!("reading the GeoIP database {}", file.display()))?;
        Ok(Self { reader })
    }

    /// "City, Country", or "Country" (a Country database, or no city known), in English; `None`
    /// when the address is not in the database (private ranges, say).
    pub fn locate(&self, ip: IpAddr) -> Option<String> {
        // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let found = self.reader.lookup(ip).ok()?;
        if !found.has_data() {
            return None;
        }
        let name = |p: &[maxminddb::PathElement<'_>]| -> Option<String> {
            found
                .decode_path::<String>(p)
                .ok()
                .flatten()
                .filter(|s| !s.trim().is_empty())
        };
        let country = name(&path!["country", "names", "en"])
            .or_else(|| name(&path!["registered_country", "names", "en"]));
        let city = name(&path!["city", "names", "en"]);
        match (city, country) {
            (Some(city), Some(country)) => Some(format!("{city}, {country}")),
            (None, Some(country)) => Some(country),
            (Some(city), None) => Some(city),
            (None, None) => None,
        }
    }
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database_type", &self.reader.metadata().database_type)
            .finish()
    }
}
