//! The batch rules, staged on a working copy with no store and no thread.

use tokio::sync::oneshot;

use super::*;

fn working(images: &[&str], max_images: usize, max_total_images: usize) -> Working {
    let images = images
        .iter()
        .map(|id| StoredImage {
            id: ImageId::parse(id).unwrap(),
            generation: 1,
            canvas: Default::default(),
            version: 0,
        })
        .collect();
    Working::new(images, Counters::default(), Limits { max_images, max_total_images }, fastrand::Rng::with_seed(1))
}

fn id(s: &str) -> ImageId {
    ImageId::parse(s).unwrap()
}

fn create(
    w: &mut Working,
    undo: &mut Undo,
    name: Option<&str>,
) -> (Staged, oneshot::Receiver<Result<ImageId, ServiceError>>) {
    let (reply, rx) = oneshot::channel();
    (w.stage(Op::Create { id: name.map(id), reply }, undo), rx)
}

fn ensure(w: &mut Working, undo: &mut Undo, name: &str) -> Staged {
    let (reply, _rx) = oneshot::channel();
    w.stage(Op::Ensure { id: id(name), reply }, undo)
}

fn refused(staged: &Staged) -> Option<&ServiceError> {
    match staged {
        Staged::Refused { error, .. } => Some(error),
        _ => None,
    }
}

#[test]
fn the_active_image_limit_is_exact() {
    let mut w = working(&["a"], 3, 100);
    let mut undo = w.begin();
    assert!(refused(&create(&mut w, &mut undo, Some("b")).0).is_none());
    assert!(refused(&create(&mut w, &mut undo, None).0).is_none());
    // Three exist: the limit is 3, not 4.
    assert!(matches!(refused(&create(&mut w, &mut undo, Some("d")).0), Some(ServiceError::TooManyImages)));
    // A delete makes room again, within the same batch.
    let (reply, _rx) = oneshot::channel();
    assert!(matches!(w.stage(Op::Delete { id: id("a"), reply }, &mut undo), Staged::Deleted { .. }));
    assert!(refused(&create(&mut w, &mut undo, Some("d")).0).is_none());
    assert_eq!(w.counters(), Counters { images_created: 3, images_deleted: 1 });
}

#[test]
fn the_total_limit_caps_creating_connects_and_existing_images_still_connect() {
    let mut w = working(&["a", "b"], 1, 3);
    let mut undo = w.begin();
    assert!(matches!(ensure(&mut w, &mut undo, "c"), Staged::Ensured { created: true, .. }));
    match ensure(&mut w, &mut undo, "d") {
        Staged::Refused { error: ServiceError::TooManyTotal(3), .. } => {}
        _ => panic!("a fourth image must be refused"),
    }
    assert!(matches!(ensure(&mut w, &mut undo, "a"), Staged::Ensured { created: false, .. }));
    // POST's own limit is lower and counts every image.
    assert!(matches!(refused(&create(&mut w, &mut undo, Some("e")).0), Some(ServiceError::TooManyImages)));
}

#[test]
fn a_random_id_taken_since_it_was_picked_is_picked_again() {
    let mut w = working(&[], 10, 100);
    let (reply, _rx) = oneshot::channel();
    let mut ops = vec![Op::Create { id: None, reply }];
    w.pick_ids(&mut ops);
    let Op::Create { id: Some(picked), .. } = &ops[0] else { panic!("an id was picked") };
    let picked = picked.clone();
    // Another instance created that very id before this batch locked it.
    let taken = StoredImage { id: picked.clone(), generation: 9, canvas: Default::default(), version: 0 };
    w.refresh(std::slice::from_ref(&picked), Locked { images: vec![taken], global: Some((Counters::default(), 1)) });
    let mut undo = w.begin();
    let Staged::Created { id: got, .. } = w.stage(ops.pop().unwrap(), &mut undo) else { panic!("created") };
    assert_ne!(got, picked);
    assert_eq!(w.generation(&picked), Some(9), "the other instance's image is untouched");
    // A name the client chose is not re-picked: it already exists.
    let mut ops = vec![];
    let (reply, _rx) = oneshot::channel();
    ops.push(Op::Create { id: Some(got.clone()), reply });
    assert!(matches!(refused(&w.stage(ops.pop().unwrap(), &mut undo)), Some(ServiceError::AlreadyExists)));
}

#[test]
fn create_then_delete_in_one_batch_writes_a_delete_and_counts_both() {
    let mut w = working(&[], 10, 100);
    let mut undo = w.begin();
    assert!(matches!(create(&mut w, &mut undo, Some("brief")).0, Staged::Created { .. }));
    let (reply, _rx) = oneshot::channel();
    let command = Command::ClearCanvas;
    assert!(matches!(
        w.stage(Op::Apply { id: id("brief"), command, reply }, &mut undo),
        Staged::Applied { version: 1, .. }
    ));
    let (reply, _rx) = oneshot::channel();
    assert!(matches!(w.stage(Op::Delete { id: id("brief"), reply }, &mut undo), Staged::Deleted { .. }));
    let writes = w.writes(&undo);
    assert!(matches!(writes.as_slice(), [Write::Delete(gone)] if gone.as_str() == "brief"));
    assert_eq!(w.counters(), Counters { images_created: 1, images_deleted: 1 });
    assert_eq!(w.generation(&id("brief")), None);
}

#[test]
fn undo_puts_back_every_image_and_counter() {
    let mut w = working(&["a"], 10, 100);
    let mut undo = w.begin();
    let (reply, _rx) = oneshot::channel();
    w.stage(Op::Apply { id: id("a"), command: Command::ClearCanvas, reply }, &mut undo);
    create(&mut w, &mut undo, Some("b"));
    let (reply, _rx) = oneshot::channel();
    w.stage(Op::Delete { id: id("a"), reply }, &mut undo);
    w.undo(undo);
    assert_eq!(w.generation(&id("a")), Some(1));
    assert_eq!(w.generation(&id("b")), None);
    assert_eq!(w.counters(), Counters::default());
    let mut undo = w.begin();
    let (reply, _rx) = oneshot::channel();
    let Staged::Applied { version, .. } =
        w.stage(Op::Apply { id: id("a"), command: Command::ClearCanvas, reply }, &mut undo)
    else {
        panic!("applied")
    };
    assert_eq!(version, 1, "the undone version is given again");
}
