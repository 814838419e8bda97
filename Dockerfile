# One image for both Herald processes; docker-compose.yml picks the command:
#   API:    uvicorn --factory api.main:create_app --host 0.0.0.0 --port 8000
#   worker: python worker.py [--queues email,sms]
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first so code changes do not invalidate this layer. The stub packages let
# setuptools resolve the project; the real code is copied over them below.
COPY pyproject.toml ./
RUN mkdir -p api activities channels core store workflows \
    && touch worker.py \
    && pip install . \
    && pip uninstall -y herald \
    && rm -rf api activities channels core store workflows worker.py build *.egg-info

COPY . .
RUN pip install --no-deps . \
    && rm -rf build *.egg-info \
    && useradd --system --uid 10001 --home-dir /app herald

USER herald
EXPOSE 8000

CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
