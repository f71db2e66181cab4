# wsproxy: a proxy for the OpenAI Responses API.
#   docker build -t wsproxy .
#   docker run -p 8080:8080 -e OPENAI_API_KEY=sk-... -v wsproxy-data:/data wsproxy
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    WSPROXY_HOST=0.0.0.0 WSPROXY_PORT=8080 WSPROXY_STORE_PATH=/data/wsproxy.sqlite3

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wsproxy ./wsproxy
RUN pip install --no-cache-dir ".[redis]" \
    && useradd --system --uid 10001 wsproxy \
    && mkdir -p /data && chown wsproxy /data

USER wsproxy
VOLUME ["/data"]
EXPOSE 8080
# SIGTERM drains in-flight responses for limits.shutdown_grace seconds (30 by default).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('WSPROXY_PORT','8080'))"
CMD ["wsproxy", "serve"]
