//! The base URL of the live intensity source (`intensity_url=`): parsed
//! and checked when the configuration is read, used when the source is
//! asked. Its own module so that the configuration can check it without
//! depending on the client that uses it.

use std::net::IpAddr;

/// The ElectricityMaps API, used when `intensity_url` is not set.
pub const DEFAULT_URL: &str = "https://api.electricitymaps.com";

/// `http[s]://host[:port][/prefix]`, checked at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// The URL as given, without a trailing slash.
    pub url: String,
    pub https: bool,
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (empty for the root).
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(v: &str) -> Result<BaseUrl, String> {
        let (https, rest) = if let Some(r) = v.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = v.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{v}` is not an https:// (or http://) URL"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("`{v}`: bad port `{p}`"))?;
                (h, port)
            }
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // No `user@`: credentials in the URL would land in curl's argv.
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        {
            return Err(format!("`{v}`: bad host `{host}`"));
        }
        if !path
            .chars()
            .all(|c| c.is_ascii_graphic() && !"?#\\\"'<>`{}".contains(c))
        {
            return Err(format!("`{v}`: a base URL takes a plain path, no query"));
        }
        Ok(BaseUrl {
            url: v.trim_end_matches('/').to_string(),
            https,
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// Loopback needs no proxy, and a site's `http_proxy` must not capture it.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:8080/em/"),
            Ok(BaseUrl {
                url: "http://127.0.0.1:8080/em".into(),
                https: false,
                host: "127.0.0.1".into(),
                port: 8080,
                prefix: "/em".into()
            })
        );
        assert_eq!(
            BaseUrl::parse(DEFAULT_URL),
            Ok(BaseUrl {
                url: DEFAULT_URL.into(),
                https: true,
                host: "api.electricitymaps.com".into(),
                port: 443,
                prefix: String::new()
            })
        );
        let v6 = BaseUrl::parse("http://[::1]:81").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.is_loopback()),
            ("::1", 81, true)
        );
        assert!(BaseUrl::parse("http://localhost").unwrap().is_loopback());
        assert!(
            !BaseUrl::parse("http://proxy.cluster")
                .unwrap()
                .is_loopback()
        );
        for bad in [
            "ftp://x",
            "api.electricitymaps.com",
            "http://",
            "http://h:99999",
            "https://h:0",
            "http://h/p?q=1",
            "https://user:pw@h",
            "http://h/a b",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
