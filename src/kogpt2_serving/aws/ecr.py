"""Container images in ECR: URIs, whether an image is there, and removing it on teardown."""
from .calls import Call, send
from .errors import AwsCallError, DeploymentError

# Deep Learning Containers (the MXNet inference bases) are published from this account.
DLC_ACCOUNT = "763104351884"


def image_uri(account, region, repository, tag):
    return "{}.dkr.ecr.{}.amazonaws.com/{}:{}".format(account, region, repository, tag)


def describe_call(image):
    return Call("ecr", "describe_images", {"registryId": image.account, "repositoryName": image.repository,
                                           "imageIds": [image.image_id()]})


def delete_call(image):
    return Call("ecr", "batch_delete_image", {"registryId": image.account, "repositoryName": image.repository,
                                              "imageIds": [image.image_id()]})


def check_image(clients, image, write):
    """Only images in the caller's own account are checked: other registries (e.g. the DLC
    account) cannot be listed with the caller's credentials."""
    if image.account != clients.account_id():
        write("   image is in account {}, not checked".format(image.account))
        return
    try:
        send(clients, describe_call(image), write)
    except AwsCallError as e:
        if e.code in ("RepositoryNotFoundException", "ImageNotFoundException"):
            raise DeploymentError("image {}:{} is not in ECR ({}): build and push it with `make image-cpu ecr-push` "
                                  "(or image-gpu), or fix --image".format(
                                      image.repository, image.digest or image.tag or "latest", e.code))
        raise
