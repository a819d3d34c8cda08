# Sourced by scripts/test: start a throwaway PostgreSQL cluster and set SCREENER_TEST_POSTGRES_URL.
start_test_postgres() {
  local bin port dir owner
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  port=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  dir=$(mktemp -d /tmp/screener-pg.XXXXXX)
  owner=$(id -un)
  if [[ $(id -u) -eq 0 ]]; then owner=postgres; chown postgres "$dir"; fi
  run_as() { if [[ $(id -u) -eq 0 ]]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
  run_as "$bin/initdb -D $dir/data -U screener --auth=trust -E UTF8" >/dev/null || return 1
  run_as "$bin/pg_ctl -D $dir/data -o '-p $port -k $dir -c listen_addresses=127.0.0.1' -l $dir/log -w start" >/dev/null || return 1
  run_as "$bin/createdb -h 127.0.0.1 -p $port -U screener screener_test" || return 1
  SCREENER_TEST_POSTGRES_URL="postgresql+psycopg://screener@127.0.0.1:$port/screener_test"
  trap "run_as '$bin/pg_ctl -D $dir/data -m fast stop' >/dev/null 2>&1 || true" EXIT
  echo "scripts/test: PostgreSQL on port $port" >&2
}
