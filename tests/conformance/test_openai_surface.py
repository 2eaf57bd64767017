"""The official openai Python SDK against the gateway for the rest of OpenAI's surface:
moderations, images, speech (streamed), transcriptions and translations (multipart uploads).

Run by tests/openai_surface.rs, which starts the gateway in front of the mock provider (each
model's first target answers 503, so every call here also falls back) and sets GATEWAY to its
/v1 base URL.
"""
import os

import openai
import pytest
from openai import OpenAI

GATEWAY = os.environ["GATEWAY"]
AUDIO = ("speech.mp3", b"ID3\x04\x00" + bytes(range(256)) * 250, "audio/mpeg")


@pytest.fixture(scope="module")
def c():
    return OpenAI(base_url=GATEWAY, api_key="sk-client-test", max_retries=0, timeout=20)


def test_moderations_without_a_model(c):
    r = c.moderations.create(input=["hello", "world"])
    assert r.model == "omni-moderation-latest"
    assert len(r.results) == 2
    assert r.results[0].flagged is False
    assert r.results[0].categories.violence is False


def test_images(c):
    r = c.images.generate(model="dall-e-3", prompt="a lighthouse", n=2, size="1024x1024")
    assert len(r.data) == 2
    assert r.data[0].url.startswith("https://")


def test_speech_streams_audio(c):
    with c.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there"
    ) as resp:
        assert resp.headers["content-type"] == "audio/mpeg"
        data = b"".join(resp.iter_bytes())
    assert data.startswith(b"ID3")
    assert len(data) == 4 * 1024


def test_transcription_upload(c):
    r = c.audio.transcriptions.create(model="whisper-1", file=AUDIO)
    assert r.text == "Hello there!"


def test_translation_upload(c):
    r = c.audio.translations.create(model="whisper-1", file=AUDIO)
    assert r.text == "Hello there!"


def test_a_wrong_key_is_refused():
    bad = OpenAI(base_url=GATEWAY, api_key="sk-wrong", max_retries=0, timeout=20)
    with pytest.raises(openai.AuthenticationError):
        bad.moderations.create(input="x")
