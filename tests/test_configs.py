"""Every config in configs/ composes and resolves; overrides reach the objects."""
import pytest
from helpers import ROOT, compose_train
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

CONFIGS = ROOT / "configs"
TRAIN_GROUPS = ["model", "loss", "style", "data", "trainer", "logger", "callbacks", "experiment"]
# Values a config deliberately leaves mandatory (???) for the user to fill in.
REQUIRED = {"style=custom": ["style.image=s.jpg"], "data=single": ["data.content=p.jpg"],
            "experiment=paper": ["data.content=p.jpg"]}


def options():
    for group in TRAIN_GROUPS:
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            yield f"{group}={path.stem}"


@pytest.mark.parametrize("choice", list(options()))
def test_every_train_config_composes_and_resolves(choice):
    cfg = compose_train([choice, *REQUIRED.get(choice, [])])
    with open_dict(cfg):
        del cfg["hydra"]
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert container["model"]["_target_"] == "hrstyle.models.HRNet"


def test_every_group_has_configs():
    for group in TRAIN_GROUPS:
        assert list((CONFIGS / group).glob("*.yaml")), group
    assert {"cpu", "gpu", "ddp"} <= {p.stem for p in (CONFIGS / "trainer").glob("*.yaml")}


def test_command_line_overrides_reach_the_objects():
    cfg = compose_train(["loss.content_weight=50", "loss.style_layers=[relu1_1,relu3_1]", "loss.style_layer_weights=[2,3]", "loss.style_weight=10", "loss.weights=random", "loss.arch=vgg16",
                         "model.width=0.5", "model.padding_mode=reflect", "model.output=image", "optimizer.lr=0.01"])
    loss = instantiate(cfg.loss, _convert_="all")
    assert (loss.content_weight, loss.style_weight) == (50, 10)
    assert loss.style_layers == {"relu1_1": 2.0, "relu3_1": 3.0}
    assert loss.content_layer == "conv4_2"
    model = instantiate(cfg.model)
    assert model.config == {"width": 0.5, "padding_mode": "reflect", "output": "image", "color_branch": False,
                            "color_learned": True}
    assert instantiate(cfg.optimizer)(model.parameters()).defaults["lr"] == 0.01


def test_default_recipe_and_the_papers():
    """The default trains a feed-forward style over many photos (residual generator, Adam 1e-3);
    experiment=paper keeps the paper's generator output and its one-photo schedule."""
    cfg = compose_train(["style=custom", "style.image=x.jpg"])
    assert cfg.model.output == "residual" and cfg.model.color_branch and cfg.optimizer.lr == 1e-3
    paper = compose_train(["experiment=paper", "data.content=photo.jpg"])
    assert paper.model.output == "image" and not paper.model.color_branch
    assert paper.optimizer.lr == 5e-3 and paper.scheduler.step_size == 200 and paper.scheduler.gamma == 0.9
    assert paper.loss.style_statistic == "gram" and paper.loss.color_distribution_weight == 0
    assert paper.loss.palette_weight == 0
    assert list(paper.loss.style_layers) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    # Photo styles: feature distributions, the CIELAB colour term and the palette term (docs/recipes.md).
    assert cfg.loss.style_statistic == "sliced_wasserstein" and cfg.loss.color_distribution_weight == 10
    assert cfg.loss.palette_weight == 100
    quick = compose_train(["experiment=cpu_quick", "style=custom", "style.image=x.jpg"])
    assert quick.model.output == "residual" and quick.trainer.max_steps == 600
    assert quick.loss.style_weight == 10 and quick.loss.photoreal_weight == 10
    # Painterly styles use the painterly recipe: the paper's generator output and rate, no photorealism controls.
    for painting in ("starry", "udnie"):
        painterly = compose_train([f"style={painting}", "experiment=cpu_quick"])
        assert painterly.model.output == "image" and not painterly.model.color_branch and painterly.optimizer.lr == 5e-3
        assert painterly.loss.photoreal_weight == 0 and painterly.style.guided_radius == 0
        assert painterly.loss.palette_weight == 0
        assert painterly.style.color_match == 0 and painterly.style.get("color_bands", 1) == 1
        assert list(painterly.loss.style_layers) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
        assert painterly.loss.style_statistic == "gram" and painterly.loss.color_distribution_weight == 0
    assert compose_train(["style=starry"]).loss.style_weight == 3
    assert compose_train(["style=custom", "style.image=x.jpg"]).style.guided_radius == 8
    custom = compose_train(["style=custom", "style.image=x.jpg"]).style
    assert (custom.color_match, custom.color_bands) == ("auto", "auto")  # from the style image's layout
    assert cfg.loss.arch == "vgg19" and cfg.loss.weights == "imagenet"
    loss = dict(zip(cfg.loss.style_layers, cfg.loss.style_layer_weights))
    # The paper's layer weights on the post-ReLU layers (docs/recipes.md, "Style layers after the ReLU").
    assert loss == {"relu1_1": 0.1, "relu2_1": 0.2, "relu3_1": 0.4, "relu4_1": 0.8, "relu5_1": 1.6}
    assert cfg.loss.content_layer == "conv4_2"


def test_a_style_can_set_its_own_loss_weights():
    assert compose_train(["style=udnie"]).loss.style_weight == 5.0
    assert compose_train(["style=udnie", "loss.style_weight=7"]).loss.style_weight == 7.0
    assert compose_train(["style=udnie"]).style.name == "udnie"


def test_ddp_preset():
    cfg = compose_train(["trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == -1 and cfg.trainer.accelerator == "gpu"


@pytest.mark.parametrize("name", ["infer", "export"])
def test_other_top_level_configs_compose(name):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(name)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert container["checkpoint"] == "checkpoints/starry.pt"


def test_all_top_level_configs_are_tested():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == {"train", "infer", "export", "evaluate", "optimize", "explore",
                                                        "app"}


def test_app_config_composes():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("app", overrides=["checkpoints=outputs/train/mine", "port=7000"])
    assert cfg.checkpoints == "outputs/train/mine" and cfg.port == 7000 and cfg.host == "127.0.0.1"


@pytest.mark.parametrize("name", ["evaluate", "optimize", "explore"])
def test_evaluation_and_optimization_configs_compose(name):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(name, overrides=["loss=vgg16", "loss.weights=random"])
    assert cfg.loss.arch == "vgg16"
