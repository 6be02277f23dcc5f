#!/usr/bin/env bash
# Make sure RabbitMQ (5672) and PostgreSQL (5432) answer on localhost.
# Uses what is installed here (rabbitmq-server, pg_ctlcluster); where neither is
# installed but Docker is, starts the docker-compose services instead.
set -euo pipefail
cd "$(dirname "$0")/.."

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# a RabbitMQ node out of file descriptors accepts TCP but never answers the AMQP header
amqp_answers() {
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672; printf "AMQP\x00\x00\x09\x01" >&3;
                     head -c 8 <&3 | grep -q .' 2>/dev/null
}
start_rabbitmq() {
  # quorum queues hold files open: the default 1024 descriptors run out with a few
  # hundred queues (RabbitMQ's own production advice is 65536), and the node then takes
  # TCP connections but answers no AMQP. Debian's rabbitmq-server, run as root, starts
  # the node through `su rabbitmq`, whose PAM session sets the soft limit back to 1024
  # whatever this shell's is: raise it there, to the hard limit
  if [ "$(id -u)" = 0 ] && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && id rabbitmq >/dev/null 2>&1; then
    su rabbitmq -s /bin/sh -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null;
      echo "services: RabbitMQ gets $(ulimit -n) file descriptors" >&2;
      cd /var/lib/rabbitmq && exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached'
  else
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    rabbitmq-server -detached
  fi
}
wait_port() {  # port, name, seconds
  for _ in $(seq 1 "$3"); do up "$1" && return 0; sleep 1; done
  echo "services: $2 did not come up on port $1" >&2; return 1
}

if ! up 5672; then
  if command -v rabbitmq-server >/dev/null; then
    echo "services: starting RabbitMQ (rabbitmq-server -detached)"
    start_rabbitmq
  elif command -v docker >/dev/null; then
    docker compose up -d rabbitmq
  else
    echo "services: no RabbitMQ on 5672 and neither rabbitmq-server nor docker to start one" >&2
    exit 1
  fi
  wait_port 5672 RabbitMQ 90
fi
if command -v rabbitmqctl >/dev/null && [ "$(id -u)" = 0 ]; then
  # a node still booting (recovering its quorum queues takes minutes with a few hundred)
  # answers no AMQP header yet either, and a stop sent to it then hangs: wait for it first
  timeout 300 rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
if ! amqp_answers; then
  if command -v rabbitmqctl >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "services: RabbitMQ accepts TCP but does not answer AMQP; restarting it" >&2
    if ! timeout 300 rabbitmqctl stop >/dev/null 2>&1; then
      echo "services: RabbitMQ did not stop within 5 minutes; stop it by hand" >&2
      exit 1
    fi
    start_rabbitmq
    wait_port 5672 RabbitMQ 90
  else
    echo "services: RabbitMQ on 5672 does not answer AMQP (out of file descriptors?)" >&2
    exit 1
  fi
fi
if command -v rabbitmqctl >/dev/null && [ "$(id -u)" = 0 ]; then
  # wait until the node accepts connections, not just until the port is open
  rabbitmqctl await_startup >/dev/null 2>&1 || true
  # a node started before (by the machine, by hand) may run with the default 1024
  # descriptors: it works until a few hundred quorum queues are declared, then answers no
  # AMQP. Not restarted here (others may be using it); said, with how to fix it
  limit=$(rabbitmqctl -q status --formatter json 2>/dev/null | python3 -c \
    'import json, sys; print(json.load(sys.stdin)["file_descriptors"]["total_limit"])' \
    2>/dev/null || true)
  if [ -n "$limit" ] && [ "$limit" -lt 4000 ]; then
    echo "services: warning: RabbitMQ may open only $limit files; a few hundred quorum" \
         "queues exhaust that and it then answers no AMQP. To raise it: rabbitmqctl stop" \
         "&& bash scripts/services.sh" >&2
  fi
  # management API (per-party users), shovel (the benchmark's yardstick), prometheus
  rabbitmq-plugins enable rabbitmq_management rabbitmq_shovel rabbitmq_prometheus \
    >/dev/null 2>&1 || echo "services: could not enable RabbitMQ plugins" >&2
fi

if ! up 5432; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  elif command -v docker >/dev/null; then
    docker compose up -d postgres
  else
    echo "services: no PostgreSQL on 5432 (the PostgreSQL tests will fail)" >&2
    exit 1
  fi
  wait_port 5432 PostgreSQL 60
fi
echo "services: RabbitMQ and PostgreSQL are up"
