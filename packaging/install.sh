#!/usr/bin/env bash
# Installs a built Confab as a systemd service on this machine.
#   cargo build --release && sudo packaging/install.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${CONFAB_BIN:-$here/target/release/confab}"
[ -x "$bin" ] || { echo "no binary at $bin: run 'cargo build --release' first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 1; }

install -m 0755 "$bin" /usr/local/bin/confab
id confab >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin confab
install -d -m 0755 /etc/confab
# Keep an existing configuration; the shipped one documents every key at its default.
[ -f /etc/confab/config.toml ] || install -m 0644 "$here/config.toml" /etc/confab/config.toml
install -d -m 0755 /usr/local/share/doc/confab
install -m 0644 "$here/README.md" "$here/docs/protocol.md" /usr/local/share/doc/confab/
install -m 0644 "$here/packaging/confab.service" /etc/systemd/system/confab.service
systemctl daemon-reload
systemctl enable --now confab
echo "Confab is running: systemctl status confab; logs: journalctl -u confab -f"
echo "It listens on 127.0.0.1:8080 unless /etc/confab/config.toml says otherwise."
