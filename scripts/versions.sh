# The pinned versions of what the tests drive and the worker image carries,
# in one place: sourced by scripts/test and scripts/worker-image.
CLAUDE_CODE_VERSION=2.1.332
CODEX_VERSION=0.171.0
QWEN_CODE_VERSION=0.24.4
GEMINI_CLI_VERSION=0.61.0
OPENCODE_VERSION=1.18.33
PLAYWRIGHT_CORE_VERSION=1.64.1
MOTO_VERSION=5.2.1
# The Python agent CLIs (they need Python 3.12+; 1.52.0 of kimi-cli is only a notice pointing to its successor).
KIMI_CLI_VERSION=1.51.0
MISTRAL_VIBE_VERSION=2.26.1
# The Debian release the worker image is based on (debian:<release>-slim).
DEBIAN_RELEASE=bookworm
SCHEMATHESIS_VERSION=4.32.5
