//! Provider keys a valid configuration sends or shows where they should
//! not go, most likely by a slip: a client key that is a provider's key
//! (every client then holds the provider's secret), one key variable read
//! by providers on different hosts (the key goes to both), and a key sent
//! over plain `http` to a host that looks public. Noted by `--check` and in
//! the log, not refused: each can be meant (a test set-up, a relay the
//! operator runs), and the gateway cannot tell.

use super::{ConfigProblem, Provider};
use crate::auth::KeyTable;
use std::net::IpAddr;
use std::sync::Arc;

/// Each provider key this configuration exposes, by key path.
pub(super) fn exposure_notes(providers: &[Arc<Provider>], keys: &KeyTable) -> Vec<ConfigProblem> {
    let mut notes = Vec::new();
    let mut client_keys_noted: Vec<&str> = Vec::new();
    for provider in providers {
        for key in &provider.keys {
            if let Some(client) = keys.find(key.secret.as_bytes())
                && !client_keys_noted.contains(&&*client.name)
            {
                client_keys_noted.push(&client.name);
                notes.push(ConfigProblem::new(
                    format!("keys.{}", client.name),
                    format!(
                        "its secret is provider {}'s key ({}): every client that uses it holds \
                         the provider's key; give clients keys of their own",
                        provider.name, key.env
                    ),
                ));
            }
        }
    }
    for (i, provider) in providers.iter().enumerate() {
        let host = host_of(provider);
        for earlier in &providers[..i] {
            let shared = provider
                .keys
                .iter()
                .find(|key| earlier.keys.iter().any(|other| other.env == key.env));
            if let Some(key) = shared
                && !host.eq_ignore_ascii_case(host_of(earlier))
            {
                notes.push(ConfigProblem::new(
                    format!("providers.{}.api_key_env", provider.name),
                    format!(
                        "{} is also provider {}'s key variable, and the two send it to \
                         different hosts ({host} and {}): give each provider its own variable \
                         unless both hosts are meant to have the key",
                        key.env,
                        earlier.name,
                        host_of(earlier)
                    ),
                ));
            }
        }
        if provider.is_usable()
            && provider.chat_url.origin.scheme_str() == Some("http")
            && looks_public(host)
        {
            notes.push(ConfigProblem::new(
                format!("providers.{}.base_url", provider.name),
                format!(
                    "sends the provider's key over plain http to {host}, which looks like a \
                     public host: anyone on the way can read it; use https (hosts on this \
                     machine, private addresses and internal names are not noted)"
                ),
            ));
        }
    }
    notes
}

fn host_of(provider: &Provider) -> &str {
    provider.chat_url.origin.host().unwrap_or("")
}

/// Whether `host` (as in a URL: an IPv6 address in brackets) may be
/// reached across the internet: not this machine, not a private, link-local
/// or unique-local address, not a single-label name (a container's or a
/// cluster's service) nor one under a suffix kept for internal names.
fn looks_public(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => public_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => public_v4(v4),
                None => {
                    let first = v6.segments()[0];
                    !(v6.is_loopback()
                        || v6.is_unspecified()
                        || (first & 0xfe00) == 0xfc00
                        || (first & 0xffc0) == 0xfe80)
                }
            },
        };
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    // RFC 8375's and RFC 6762's (appendix G) names for private networks,
    // and Kubernetes' service names.
    const INTERNAL: [&str; 10] = [
        ".localhost",
        ".local",
        ".internal",
        ".intranet",
        ".corp",
        ".home",
        ".private",
        ".svc",
        ".lan",
        ".home.arpa",
    ];
    name.contains('.')
        && name != "localhost"
        && !INTERNAL.iter().any(|suffix| name.ends_with(suffix))
}

/// Not this machine, a private or link-local network, or the shared space
/// of carrier-grade NAT (100.64.0.0/10, where Tailscale puts its nodes).
fn public_v4(v4: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    let shared = a == 100 && (64..128).contains(&b);
    !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        let lookup = |var: &str| {
            env.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| value.to_string())
        };
        crate::config::resolve(text, &lookup)
            .unwrap()
            .notes
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_client_key_that_is_a_provider_key_is_noted_once() {
        let found = notes(
            "[keys.team]\nsecret_env = \"TEAM_KEY\"\n[keys.other]\nsecret_env = \"OTHER_KEY\"\n",
            &[
                ("MOONSHOT_API_KEY", "sk-shared"),
                ("AIMLAPI_API_KEY", "sk-shared"),
                ("TEAM_KEY", "sk-shared"),
                ("OTHER_KEY", "sk-own"),
            ],
        );
        assert_eq!(
            found,
            [
                "keys.team: its secret is provider moonshot's key (MOONSHOT_API_KEY): every client \
              that uses it holds the provider's key; give clients keys of their own"
            ]
        );
    }

    #[test]
    fn a_key_variable_sent_to_two_hosts_is_noted_and_one_host_is_not() {
        let two_hosts = "[providers.relay]\nbase_url = \"https://relay.example.com/v1\"\n\
                         api_key_env = \"MOONSHOT_API_KEY\"\nmodels = [\"m\"]\n";
        let found = notes(two_hosts, &[("MOONSHOT_API_KEY", "k")]);
        assert_eq!(
            found,
            [
                "providers.relay.api_key_env: MOONSHOT_API_KEY is also provider moonshot's key \
              variable, and the two send it to different hosts (relay.example.com and \
              api.moonshot.ai): give each provider its own variable unless both hosts are \
              meant to have the key"
            ]
        );
        let same_host = "[providers.second]\nbase_url = \"https://API.moonshot.ai/v2\"\n\
                         api_key_env = \"MOONSHOT_API_KEY\"\nmodels = [\"m\"]\n";
        assert!(notes(same_host, &[("MOONSHOT_API_KEY", "k")]).is_empty());
    }

    #[test]
    fn plain_http_is_noted_only_for_a_keyed_provider_on_a_public_looking_host() {
        let found = notes(
            "",
            &[
                ("MOONSHOT_API_KEY", "k"),
                ("MOONSHOT_BASE_URL", "http://api.moonshot.ai/v1"),
                ("AIMLAPI_BASE_URL", "http://api.aimlapi.com/v1"),
            ],
        );
        assert_eq!(
            found,
            [
                "providers.moonshot.base_url: sends the provider's key over plain http to \
              api.moonshot.ai, which looks like a public host: anyone on the way can read it; \
              use https (hosts on this machine, private addresses and internal names are not \
              noted)"
            ]
        );
        for host in [
            "127.0.0.1:9000",
            "localhost:9000",
            "10.1.2.3",
            "192.168.0.10",
            "172.20.0.5",
            "[::1]:9000",
            "[fd00::5]",
            "mock-provider:9000",
            "llm.default.svc.cluster.local",
            "relay.corp.internal",
            "relay.corp",
            "100.64.1.2",
            "[::ffff:10.0.0.1]",
        ] {
            let url = format!("http://{host}/v1");
            assert!(
                notes(
                    "",
                    &[("MOONSHOT_API_KEY", "k"), ("MOONSHOT_BASE_URL", &url)]
                )
                .is_empty(),
                "{host}"
            );
        }
        for host in ["8.8.8.8", "[2001:db8::1]", "relay.example.com"] {
            assert!(looks_public(host), "{host}");
        }
    }
}
