"""class_prompts through Dagster: digits and an ImageNet-style folder of wnids."""

import dagster as dg
import numpy as np
from PIL import Image

from synthaug_pipeline.defs.data.assets import build_data_assets
from synthaug_pipeline.defs.partitions import class_partitions
from synthaug_pipeline.defs.prompts.assets import build_prompt_assets, prompts_markdown
from synthaug_pipeline.defs.resources import ModelsResource, SynthaugSettings
from synthaug_pipeline.lib.prompts import Prompt

PROMPT_KEYS = {"text", "template", "context", "style", "source"}


def materialize_prompts(profile: str, overrides: list[str], class_ids: list[str], partition: str) -> tuple[dict, dict]:
    partitions = class_partitions(class_ids)
    class_catalog, real_images = build_data_assets(partitions)
    (class_prompts,) = build_prompt_assets(partitions)
    result = dg.materialize(
        [class_catalog, real_images, class_prompts],
        partition_key=partition,
        resources={"settings": SynthaugSettings(profile=profile, overrides=overrides), "models": ModelsResource()},
    )
    assert result.success
    output = result.output_for_node("class_prompts")[partition]
    metadata = result.asset_materializations_for_node("class_prompts")[0].metadata
    return output, metadata


def test_digit_prompts_with_contexts_and_styles():
    overrides = [
        "prompts.templates=['a photo of a {name}', 'a scan of a {name}']",
        "prompts.contexts=['on lined paper', 'on a whiteboard']",
        "prompts.styles=['black ink']",
        "prompts.prompts_per_class=4",
        "prompts.seed=5",
    ]
    output, metadata = materialize_prompts("digits", overrides, [str(i) for i in range(10)], "3")
    assert output["class_id"] == "3" and output["class_index"] == 3 and output["class_name"] == "three"
    assert output["disambiguated_name"] == "handwritten digit 3" and output["gloss"] is None
    assert len(output["prompts"]) == 4 and len({p["text"] for p in output["prompts"]}) == 4
    for prompt in output["prompts"]:
        assert set(prompt) == PROMPT_KEYS and prompt["style"] == "black ink" and prompt["source"] == "template"
        assert prompt["text"].endswith(", black ink") and "handwritten digit 3" in prompt["text"]
    table = metadata["prompts"].value
    assert table.count("\n") == 5 and output["prompts"][0]["text"] in table
    assert metadata["num_prompts"].value == 4 and metadata["unique_prompts"].value == 4
    assert output["clip_prompt"] == "a photo of a handwritten digit 3"  # what CLIP compares the DDPM's prompt-less images with
    assert "no CLIP model" in metadata["name_reason"].value and output["llm_fallback"] is None


def test_imagenet_wnid_folders_get_disambiguated_names(tmp_path):
    wnids = ["n02012849", "n03126707"]  # crane the bird, crane the machine
    for wnid in wnids:
        (tmp_path / wnid).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / wnid / f"{i}.png")
    overrides = [f"data.path={tmp_path}", "data.image_size=8", "prompts.prompts_per_class=2", "prompts.contexts=['at a zoo', 'outdoors']"]
    bird, bird_meta = materialize_prompts("folder", overrides, wnids, "n02012849")
    machine, _ = materialize_prompts("folder", overrides, wnids, "n03126707")
    assert bird["gloss"].startswith("large long-necked wading bird") and machine["gloss"].startswith("lifts and moves heavy objects")
    assert bird["ambiguous"] and bird["lemmas"] == ["crane"]
    assert bird["disambiguated_name"] != machine["disambiguated_name"]
    assert "crane" in bird["disambiguated_name"] and bird["disambiguated_name"] != "crane"
    assert all(bird["disambiguated_name"] in p["text"] for p in bird["prompts"])
    assert bird_meta["disambiguated_name"].value == bird["disambiguated_name"]


def test_prompts_markdown_escapes_cells():
    table = prompts_markdown([Prompt("a | b", "{name} | x", None, "ink")])
    assert table.splitlines()[2] == "| 0 | a \\| b | {name} \\| x |  | ink | template |"


def test_an_llm_endpoint_that_fails_leaves_wordnet_prompts_and_says_so(tmp_path):
    import http.server
    import threading

    class Broken(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        overrides = [f"prompts.llm_url=http://127.0.0.1:{server.server_address[1]}/v1", "prompts.llm=tiny", f"output.url={tmp_path}"]
        output, metadata = materialize_prompts("digits", overrides, [str(i) for i in range(10)], "3")
    finally:
        server.shutdown()
        server.server_close()
    assert all(p["source"] == "template" for p in output["prompts"])
    assert metadata["llm_fallback"].value.startswith("LLM failed, WordNet prompts kept: prompts.llm_url")
    assert output["llm_exchange"]["error"] and output["llm_exchange"]["prompt_version"]
