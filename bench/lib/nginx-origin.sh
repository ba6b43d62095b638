# Sourced by bench scripts: an nginx origin serving 1 KiB and 16 KiB files with
# `Cache-Control: max-age=3600`, as peers.sh's origin does.
# start_nginx_origin WORKDIR PORT -> sets origin_pid (the caller's cleanup kills it)
start_nginx_origin() {
  local work=$1 port=$2
  mkdir -p "$work/www" "$work/tmp"
  head -c 1024 /dev/urandom > "$work/www/1k.bin"
  head -c 16384 /dev/urandom > "$work/www/16k.bin"
  cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  types { application/octet-stream bin; }
  client_body_temp_path $work/tmp;
  server {
    listen 127.0.0.1:$port;
    root $work/www;
    location / { add_header Cache-Control "max-age=3600"; }
  }
}
CONF
  [[ $(id -u) == 0 ]] && sed -i '1i user root;' "$work/nginx.conf"
  nginx -c "$work/nginx.conf" -e "$work/nginx.log" &
  origin_pid=$!
}
