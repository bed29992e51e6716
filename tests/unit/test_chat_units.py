"""Pure parts of the service: config, metrics exposition, board aggregation, rate limit."""

from __future__ import annotations

import pytest

from chat.config import Config
from chat.metrics import Metrics
from chat.ratelimit import TokenBucket
from chat.stats import BoardStats, aggregate


def test_config_from_env_and_overrides():
    env = {"CHAT_PORT": "8081", "CHAT_COLOR": "green", "CHAT_VERSION": "v2",
           "REDIS_URL": "redis://r:1/0", "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9",
           "CHAT_TABLE_MESSAGES": "m2", "CHAT_ADMIN_TOKEN": "t", "CHAT_FAULT_RATE": "0.3",
           "CHAT_ALLOWED_ORIGINS": "https://a.example/, https://b.example"}
    c = Config.from_env(env, port=9000)
    assert (c.port, c.color, c.version, c.redis_url) == (9000, "green", "v2", "redis://r:1/0")
    assert c.dynamodb_endpoint == "http://127.0.0.1:9" and c.table_messages == "m2"
    assert c.admin_token == "t" and c.fault_rate == 0.3
    assert c.allowed_origins == ("https://a.example", "https://b.example")
    assert c.instance_id.startswith("green-")
    d = Config.from_env({})
    assert (d.host, d.port, d.redis_url, d.aws_region, d.admin_token, d.drain_seconds) == (
        "127.0.0.1", 8000, "redis://127.0.0.1:6379/0", "ap-northeast-2", None, 10.0)
    assert (d.table_messages, d.table_connections, d.table_user_counter) == (
        "messages", "connections", "user-counter")
    with pytest.raises(ValueError):
        Config.from_env({"CHAT_FAULT_RATE": "2"})
    with pytest.raises(ValueError):
        Config.from_env({"CHAT_COLOR": "Blue Team"})


def test_config_flush_duty_from_env_and_its_bounds():
    assert Config.from_env({"CHAT_FLUSH_DUTY": "0.5"}).flush_duty == 0.5
    assert Config.from_env({"CHAT_FLUSH_DUTY": "0"}).flush_duty == 0.0  # the fixed interval
    for bad in ("-0.1", "1.5"):
        with pytest.raises(ValueError, match="CHAT_FLUSH_DUTY"):
            Config.from_env({"CHAT_FLUSH_DUTY": bad})


def test_metrics_exposition_has_labelled_series_and_histogram_buckets():
    m = Metrics("blue", "v1")
    m.sends.inc("ok")
    m.errors.inc("too_long")
    m.ack_latency.observe(0.003)
    m.ack_latency.observe(0.2)
    text = m.render()
    assert 'chat_sends_total{color="blue",version="v1",outcome="ok"} 1' in text
    assert 'chat_sends_total{color="blue",version="v1",outcome="error"} 0' in text
    assert 'chat_errors_total{color="blue",version="v1",code="too_long"} 1' in text
    assert 'chat_ack_latency_seconds_bucket{color="blue",version="v1",le="0.005"} 1' in text
    assert 'chat_ack_latency_seconds_bucket{color="blue",version="v1",le="0.25"} 2' in text
    assert 'chat_ack_latency_seconds_bucket{color="blue",version="v1",le="+Inf"} 2' in text
    assert 'chat_ack_latency_seconds_count{color="blue",version="v1"} 2' in text
    assert "# TYPE chat_connections gauge" in text
    assert 'chat_http_requests_total{color="blue",version="v1",status="5xx"} 0' in text


def test_board_aggregates_instances_per_color():
    s = BoardStats()
    s.handshake()
    for x in (0.01, 0.02, 0.5):
        s.ack(x)
    s.failure()
    snap = s.snapshot()
    assert snap["new_connections_60s"] == 1 and snap["errors_60s"] == 1
    assert snap["error_rate"] == 0.25
    inst = [{"color": "blue", "version": "v1", "connections": 3, **snap},
            {"color": "blue", "version": "v1", "connections": 2, **snap},
            {"color": "green", "version": "v2", "connections": 1, **snap}]
    colors = aggregate(inst)
    assert colors["blue"]["connections"] == 5 and colors["blue"]["instances"] == 2
    assert colors["green"]["version"] == "v2" and colors["blue"]["error_rate"] == 0.25


def test_token_bucket_allows_burst_then_rate():
    b = TokenBucket(5, 10)
    assert sum(b.take() for _ in range(30)) == 10


def test_app_settings_frame_limit_ping_and_drain_before_sanic_cancels_websockets():
    from chat.app import create_app

    app = create_app(Config(color="green"))
    assert app.config.WEBSOCKET_MAX_SIZE == 16384
    assert 0 < app.ctx.pinger.interval <= 30  # ALB idle timeout is 60 s
    assert app.config.WEBSOCKET_PING_INTERVAL is None  # one Pinger, no task per connection
    assert app.websocket_enabled
    # Sanic's own "cancel every WebSocket handler on stop" listener must not run before
    # our drain: it is only registered when Sanic enables WebSockets itself.
    names = [getattr(fl.listener, "__name__", "") for fl in app._future_listeners]
    assert "_cancel_websocket_tasks" not in names
    assert "_drain_on_stop" in names
